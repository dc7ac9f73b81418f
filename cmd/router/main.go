// Command router serves Herald's gRPC API: Notify routes each notification
// to the user's SSE edges when they are online, or to the offline path.
// Callers authenticate with an API key or a client certificate, listed in a
// callers file (docs/security.md).
//
// Every flag can also be set through the environment: -redis-addr as
// HERALD_REDIS_ADDR, and so on. See docs/configuration.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/cmd/internal/telemetry"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/router"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	var (
		common daemon.Common
		kafka  daemon.Kafka
	)
	common.Register(fs, "127.0.0.1:9090")
	kafka.Register(fs)
	var f routerFlags
	f.register(fs)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	if f.maxPipe < 1 {
		return fmt.Errorf("-max-pipeline %d: must be at least 1", f.maxPipe)
	}
	log, level, err := common.Logger()
	if err != nil {
		return err
	}
	log = slog.New(router.CallerLogHandler(log.Handler()))
	reg := daemon.NewRegistry()
	grpcOpts, err := f.sec.serverOptions(log, reg, common.UserIDs())
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tr, err := telemetry.Setup(ctx, "herald-router", log)
	if err != nil {
		return err
	}
	defer tr.Shutdown(ctx)

	rdb := common.Redis()
	defer rdb.Close()
	pres, err := presence.New(rdb, presence.Config{Prefix: common.RedisPrefix})
	if err != nil {
		return err
	}
	pcfg := f.publisherConfig()
	pcfg.TracerProvider = tr.Provider
	ready := []func(context.Context) error{daemon.RedisReady(rdb)}
	var sweeper *receipts.Sweeper
	if f.offline {
		if err := kafka.Ensure(ctx); err != nil {
			return err
		}
		q, err := queue.NewKafka(kafka.Config(), kafka.OfflineTopic)
		if err != nil {
			return err
		}
		defer q.Close()
		pcfg.Offline = q
		rc := receipts.New(rdb, receipts.Config{Prefix: common.RedisPrefix})
		pcfg.Receipts = rc
		if sweeper, err = router.NewSweeper(rc, q, log, reg); err != nil {
			return err
		}
		ready = append(ready, kafka.Ready)
	} else {
		log.Warn("offline path disabled: notifications for users who are not connected are only kept in history")
	}
	pub, err := delivery.NewPublisher(rdb, pres, pcfg)
	if err != nil {
		return err
	}
	devices, err := devices.New(rdb, devices.Config{Prefix: common.RedisPrefix, MaxPerUser: f.maxDevices})
	if err != nil {
		return err
	}
	svc, err := router.New(f.serviceConfig(common.UserIDs()), router.Deps{Publisher: pub, Devices: devices, Logger: log, Registerer: reg,
		TracerProvider: tr.Provider})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", f.grpcAddr)
	if err != nil {
		return err
	}
	log.Info("router listening", slog.String("grpc", lis.Addr().String()), slog.String("admin", common.AdminAddr))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Serve(gctx, lis, grpcOpts...) })
	if sweeper != nil {
		g.Go(func() error { return sweeper.Run(gctx) })
	}
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: daemon.AllReady(ready...), Level: level}
		return daemon.ServeHTTP(gctx, common.AdminAddr, admin.Handler(), f.shutdown)
	})
	err = g.Wait()
	log.Info("router stopped")
	return err
}
