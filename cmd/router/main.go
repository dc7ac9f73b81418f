// Command router serves Herald's gRPC API: Notify routes each notification
// to the user's SSE edges when they are online, or to the offline path.
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
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery"
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
	var common daemon.Common
	common.Register(fs, "127.0.0.1:9090")
	var (
		grpcAddr   = fs.String("grpc-addr", ":7070", "gRPC listen address")
		maxPayload = fs.Int("max-payload-bytes", 64<<10, "largest Notify data accepted")
		defaultTTL = fs.Duration("default-ttl", time.Hour, "TTL of a notification that sets none")
		idemWindow = fs.Duration("idempotency-window", 10*time.Minute, "how long idempotency keys are remembered")
		shutdown   = fs.Duration("shutdown-timeout", 10*time.Second, "graceful stop limit before in-flight calls are cut")
		histLen    = fs.Int("history-length", 100, "events kept per user and topic for Last-Event-ID recovery")
		histWindow = fs.Duration("history-window", 10*time.Minute, "how long events are kept for recovery; must match the edges'")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	log, level, err := common.Logger()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rdb := common.Redis()
	defer rdb.Close()
	reg := daemon.NewRegistry()
	pres, err := presence.New(rdb, presence.Config{Prefix: common.RedisPrefix})
	if err != nil {
		return err
	}
	pub, err := delivery.NewPublisher(rdb, pres, delivery.PublisherConfig{
		IdempotencyWindow: *idemWindow,
		History:           delivery.HistoryConfig{Length: *histLen, Window: *histWindow},
	})
	if err != nil {
		return err
	}
	svc, err := router.New(router.Config{
		MaxPayloadBytes: *maxPayload,
		DefaultTTL:      *defaultTTL,
		ShutdownTimeout: *shutdown,
	}, router.Deps{Publisher: pub, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return err
	}
	log.Info("router listening", slog.String("grpc", lis.Addr().String()), slog.String("admin", common.AdminAddr))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Serve(gctx, lis) })
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: daemon.RedisReady(rdb), Level: level}
		return daemon.ServeHTTP(gctx, common.AdminAddr, admin.Handler(), *shutdown)
	})
	err = g.Wait()
	log.Info("router stopped")
	return err
}
