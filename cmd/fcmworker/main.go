// Command fcmworker is Herald's offline path: a Kafka consumer-group member
// that pushes offline users' notifications through Firebase Cloud Messaging,
// retries what FCM asks to retry, removes dead device tokens, and
// dead-letters what cannot be delivered.
//
// Every flag can also be set through the environment: -kafka-brokers as
// HERALD_KAFKA_BROKERS, and so on. See docs/configuration.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/cmd/internal/telemetry"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/fcm"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fcmworker:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("fcmworker", flag.ContinueOnError)
	var (
		common daemon.Common
		kafka  daemon.Kafka
		wf     WorkerFlags
	)
	common.Register(fs, "127.0.0.1:9093")
	kafka.Register(fs)
	wf.Register(fs)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	log, level, err := common.Logger()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tr, err := telemetry.Setup(ctx, "herald-fcmworker", log)
	if err != nil {
		return err
	}
	defer tr.Shutdown(ctx)

	rdb := common.Redis()
	defer rdb.Close()
	reg := daemon.NewRegistry()
	if err := kafka.Ensure(ctx); err != nil {
		return err
	}
	sender, err := fcm.NewSender(ctx, wf.Client())
	if err != nil {
		return err
	}
	devices, err := devices.New(rdb, devices.Config{Prefix: common.RedisPrefix})
	if err != nil {
		return err
	}
	cfg := wf.Config(kafka)
	cfg.RedisPrefix = common.RedisPrefix
	cfg.UserIDs = common.UserIDs()
	w, err := fcm.New(cfg, fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Logger: log, Registerer: reg,
		TracerProvider: tr.Provider})
	if err != nil {
		return err
	}
	log.Info("fcm worker starting", slog.String("brokers", kafka.Brokers), slog.String("topic", kafka.OfflineTopic),
		slog.String("group", cfg.GroupID), slog.String("admin", common.AdminAddr))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx) })
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: daemon.AllReady(daemon.RedisReady(rdb), kafka.Ready), Level: level}
		return daemon.ServeHTTP(gctx, common.AdminAddr, admin.Handler(), 5*time.Second)
	})
	err = g.Wait()
	log.Info("fcm worker stopped")
	return err
}
