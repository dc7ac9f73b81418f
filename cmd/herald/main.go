// Command herald runs all of Herald in one process: the gRPC router, an SSE
// edge and an FCM worker, on an embedded Redis-protocol server (unless
// REDIS_ADDR names a real Redis), an embedded Kafka wire-protocol broker
// (kfake, unless -kafka-brokers names real ones) and the FCM emulator (unless
// -fcm-endpoint names another). It is for trying Herald out and for
// development; production runs cmd/router, cmd/sseedge and cmd/fcmworker.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/router"
	"github.com/herald-push/herald/sseedge"
	"github.com/herald-push/herald/sseedge/demopage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "herald:", err)
		os.Exit(1)
	}
}

// run runs the system until ctx is done.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("herald", flag.ContinueOnError)
	var (
		grpcAddr  = fs.String("grpc-addr", "127.0.0.1:7070", "gRPC (router) listen address")
		httpAddr  = fs.String("http-addr", "127.0.0.1:8080", "SSE (edge) listen address")
		adminAddr = fs.String("admin-addr", "127.0.0.1:9090", "admin listener (metrics, health, pprof)")
		redisAddr = fs.String("redis-addr", os.Getenv("REDIS_ADDR"), "Redis address (also REDIS_ADDR); empty starts an embedded one")
		secret    = fs.String("jwt-secret", "", "HS256 secret of client tokens (default: random per start)")
		demoUser  = fs.String("demo-user", "demo", "user the printed development token is for")
		logLevel  = fs.String("log-level", "info", "log level: debug, info, warn or error")
		brokers   = fs.String("kafka-brokers", "", "Kafka brokers; empty starts an embedded broker (kfake)")
		fcmAddr   = fs.String("fcm-emulator-addr", "127.0.0.1:9097", "listen address of the embedded FCM emulator")
		fcmEnd    = fs.String("fcm-endpoint", "", "FCM endpoint to push to; empty uses the embedded emulator")
		project   = fs.String("fcm-project", "herald-dev", "Firebase project id")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	log, level, err := daemon.NewLogger(os.Stderr, "text", *logLevel)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)

	redisNote := *redisAddr
	if *redisAddr == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		defer mr.Close()
		// miniredis only expires keys when told time has passed.
		g.Go(func() error { tickMiniredis(gctx, mr); return nil })
		*redisAddr, redisNote = mr.Addr(), "embedded (miniredis at "+mr.Addr()+")"
	}
	rdb := daemon.NewRedis(*redisAddr, "")
	defer rdb.Close()
	key := []byte(*secret)
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
	}

	kafkaNote := *brokers
	if *brokers == "" {
		kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3,
			delivery.DefaultOfflineTopic, delivery.DefaultRetryTopic, delivery.DefaultDeadLetterTopic))
		if err != nil {
			return fmt.Errorf("embedded kafka: %w", err)
		}
		defer kf.Close()
		*brokers = strings.Join(kf.ListenAddrs(), ",")
		kafkaNote = "embedded (kfake at " + *brokers + ")"
	}
	kafka := daemon.Kafka{Brokers: *brokers}
	fcmNote := *fcmEnd
	if *fcmEnd == "" {
		emu, err := fcmtest.New(fcmtest.Config{Addr: *fcmAddr, Project: *project})
		if err != nil {
			return err
		}
		if err := emu.Start(); err != nil {
			return fmt.Errorf("embedded FCM emulator: %w", err)
		}
		defer emu.Close()
		*fcmEnd = emu.Endpoint()
		fcmNote = "embedded emulator at " + emu.URL()
	}

	reg := daemon.NewRegistry()
	pres, err := presence.New(rdb, presence.Config{})
	if err != nil {
		return err
	}
	queue, err := delivery.NewKafkaQueue(kafka.Config(), delivery.DefaultOfflineTopic)
	if err != nil {
		return err
	}
	defer queue.Close()
	receipts := delivery.NewReceipts(rdb, delivery.ReceiptsConfig{})
	pub, err := delivery.NewPublisher(rdb, pres, delivery.PublisherConfig{Offline: queue, Receipts: receipts})
	if err != nil {
		return err
	}
	sweeper, err := router.NewSweeper(receipts, queue, log, reg)
	if err != nil {
		return err
	}
	devices, err := delivery.NewDevices(rdb, delivery.DevicesConfig{})
	if err != nil {
		return err
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Devices: devices, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	sender, err := fcm.NewClient(ctx, fcm.ClientConfig{Project: *project, Endpoint: *fcmEnd})
	if err != nil {
		return err
	}
	worker, err := fcm.New(fcm.Config{Kafka: kafka.Config()},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	edge, err := sseedge.New(sseedge.Config{JWTSecret: key, DrainPeriod: time.Second},
		sseedge.Deps{Redis: rdb, Presence: pres, Logger: log, Registerer: reg, Pages: demopage.Handler()})
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return err
	}
	httpLis, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return err
	}
	g.Go(func() error { return svc.Serve(gctx, grpcLis) })
	g.Go(func() error { return edge.Serve(gctx, httpLis) })
	g.Go(func() error { return worker.Run(gctx) })
	g.Go(func() error { return sweeper.Run(gctx) })
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: daemon.AllReady(edge.Ready, kafka.Ready), Level: level}
		return daemon.Serve(gctx, adminLis, admin.Handler(), time.Second)
	})

	token, err := sseedge.IssueToken(key, *demoUser, 24*time.Hour, time.Now(), "demo.*")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `
Herald is running in one process: router, SSE edge and FCM worker.
  Redis:  %[1]s
  Kafka:  %[7]s
  FCM:    %[8]s

Open the demo page in a browser (it shows events as they arrive, and reconnects):
  http://%[2]s/?access_token=%[3]s&topic=demo.chat

or the raw event stream:
  curl -N 'http://%[2]s/v1/events?access_token=%[3]s'

Send %[4]q a notification, from another terminal:
  go run ./cmd/heraldctl notify -addr %[5]s -user %[4]s -event hello -data '{"msg":"hi"}'

Offline users get a push instead. Register a device for "bob", who is not
connected, notify him, and see the push the FCM emulator received:
  go run ./cmd/heraldctl device register -addr %[5]s -user bob -token demo-device-1
  go run ./cmd/heraldctl notify -addr %[5]s -user bob -title "Order filled" -body "100 ACME" -data '{"order":42}'
  curl -s %[9]s/emulator/messages

Pushes that fail for good land in the dead-letter topic:
  go run ./cmd/heraldctl dlq ls -kafka-brokers %[10]s

gRPC (with reflection):  %[5]s  (no authentication: development only)
Metrics and health:      http://%[6]s/metrics  /healthz  /readyz
Stop with Ctrl-C.

`, redisNote, httpLis.Addr(), token, *demoUser, grpcLis.Addr(), adminLis.Addr(), kafkaNote, fcmNote,
		strings.TrimSuffix(*fcmEnd, "/v1"), *brokers)
	return g.Wait()
}

// tickMiniredis advances the embedded Redis' clock for key expiry.
func tickMiniredis(ctx context.Context, mr *miniredis.Miniredis) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mr.FastForward(time.Second)
		}
	}
}
