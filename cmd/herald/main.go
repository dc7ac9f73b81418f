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
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/herald/embedded"
	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/cmd/internal/telemetry"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
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
		fcmAddr   = fs.String("fcm-emulator-addr", fcmtest.DevAddr, "listen address of the embedded FCM emulator")
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
	tr, err := telemetry.Setup(ctx, "herald", log)
	if err != nil {
		return err
	}
	defer tr.Shutdown(ctx)
	st, err := startStack(*redisAddr, *brokers, *fcmEnd, *fcmAddr, *project)
	if err != nil {
		return err
	}
	defer st.close()
	rdb := daemon.NewRedis(st.redisAddr, "")
	defer rdb.Close()
	key := []byte(*secret)
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
	}

	kafka := daemon.Kafka{Brokers: st.brokers}
	reg := daemon.NewRegistry()
	queue, err := queue.NewKafka(kafka.Config(), queue.DefaultOfflineTopic)
	if err != nil {
		return err
	}
	defer queue.Close()
	receipts := receipts.New(rdb, receipts.Config{})
	sweeper, err := router.NewSweeper(receipts, queue, log, reg)
	if err != nil {
		return err
	}
	devices, err := devices.New(rdb, devices.Config{})
	if err != nil {
		return err
	}
	sender, err := fcm.NewClient(ctx, fcm.ClientConfig{Project: *project, Endpoint: st.fcmEndpoint})
	if err != nil {
		return err
	}
	worker, err := fcm.New(fcm.Config{Kafka: kafka.Config()},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Logger: log, Registerer: reg, TracerProvider: tr.Provider})
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	sys, err := embedded.Start(gctx, g, rdb, embedded.Config{
		Publisher: delivery.PublisherConfig{Offline: queue, Receipts: receipts, TracerProvider: tr.Provider},
		Edge:      sseedge.Config{JWTSecret: key, DrainPeriod: time.Second},
	}, embedded.Deps{
		Router: router.Deps{Devices: devices, Logger: log, Registerer: reg, TracerProvider: tr.Provider},
		Edge:   sseedge.Deps{Logger: log, Registerer: reg, Pages: demopage.Handler(), TracerProvider: tr.Provider},
	}, *grpcAddr, *httpAddr)
	if err != nil {
		adminLis.Close()
		return err
	}
	g.Go(func() error { return worker.Run(gctx) })
	g.Go(func() error { return sweeper.Run(gctx) })
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: daemon.AllReady(sys.Edge.Ready, kafka.Ready), Level: level}
		return daemon.Serve(gctx, adminLis, admin.Handler(), time.Second)
	})

	token, err := sseedge.IssueToken(key, *demoUser, 24*time.Hour, time.Now(), "demo.*")
	if err != nil {
		return err
	}
	banner{
		redis: st.redisNote, kafka: st.kafkaNote, fcm: st.fcmNote,
		http: sys.HTTP.Addr().String(), grpc: sys.GRPC.Addr().String(), admin: adminLis.Addr().String(),
		token: token, user: *demoUser, fcmEndpoint: st.fcmEndpoint, brokers: st.brokers,
	}.print(stdout)
	return g.Wait()
}
