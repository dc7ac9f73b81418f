package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/router"
)

// baselinePublish publishes 100-byte messages in pipelines of pipe for d
// from workers goroutines, on a channel one subscriber drains, as an edge
// would: the most messages a second this Redis and this client carry.
func baselinePublish(ctx context.Context, addr string, workers, pipe int, d time.Duration) (float64, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	channel := "heraldbench:baseline:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	sub := rdb.Subscribe(ctx, channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return 0, fmt.Errorf("subscribe: %w", err)
	}
	go func() {
		for range sub.Channel(redis.WithChannelSize(1 << 16)) {
		}
	}()
	msg := make([]byte, 100)
	var sent atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				p := rdb.Pipeline()
				for range pipe {
					p.Publish(ctx, channel, msg)
				}
				if _, err := p.Exec(ctx); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				sent.Add(int64(pipe))
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, fmt.Errorf("publish: %w", err)
	}
	return float64(sent.Load()) / time.Since(start).Seconds(), nil
}

// noopGRPC is a gRPC server whose only service is the standard health
// service, whose Check does nothing but read a map: the cost of a unary call
// on this machine, with this client, and nothing else. Its client dials
// with router.DialOptions and its server has the router's fixed
// flow-control windows, as the router's callers and the router do: gRPC's
// bandwidth estimator, which those turn off, would cost the no-op call a
// PING now and then that the router's calls do not pay.
type noopGRPC struct {
	srv    *grpc.Server
	conn   *grpc.ClientConn
	client healthpb.HealthClient
}

func startNoopGRPC() (*noopGRPC, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(router.WindowServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	return &noopGRPC{srv: srv, conn: conn, client: healthpb.NewHealthClient(conn)}, nil
}

func (n *noopGRPC) call(ctx context.Context, _ int, _ time.Time) error {
	_, err := n.client.Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func (n *noopGRPC) close() {
	n.conn.Close()
	n.srv.Stop()
}

// fcmBaseline is the FCM emulator and the real firebase-admin-go client
// sending to it: the round trip the FCM worker's pushes are made of.
type fcmBaseline struct {
	emu    *fcmtest.Server
	client *messaging.Client
}

func startFCMBaseline(ctx context.Context) (*fcmBaseline, error) {
	emu, err := fcmtest.New(fcmtest.Config{Addr: "127.0.0.1:0", Project: "heraldbench", MaxRecords: 1000})
	if err != nil {
		return nil, err
	}
	if err := emu.Start(); err != nil {
		return nil, err
	}
	client, err := fcmtest.NewClient(ctx, emu.Endpoint(), "heraldbench")
	if err != nil {
		emu.Close()
		return nil, err
	}
	return &fcmBaseline{emu: emu, client: client}, nil
}

func (f *fcmBaseline) call(ctx context.Context, i int, _ time.Time) error {
	_, err := f.client.Send(ctx, &messaging.Message{
		Token:        "bench-device-" + strconv.Itoa(i%1000),
		Notification: &messaging.Notification{Title: "bench", Body: "x"},
		Data:         map[string]string{"n": strconv.Itoa(i)},
	})
	return err
}

func (f *fcmBaseline) close() { f.emu.Close() }
