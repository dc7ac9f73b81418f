package router_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// The cost of ack-or-push against fire-and-forget, for a connected user
// whose client acknowledges every notification, with a sweeper running:
//
//	go test -run '^$' -bench 'Mode' -benchtime 2s ./router/
//
// redis-cmds/op counts every Redis command the notification costs, those
// its scripts run included (Redis counts them in total_commands_processed):
// the router's, the client's ack (as the edge makes it) and the sweeper's.
// ns/op is the round trip of Notify, plus the ack's for ack-or-push.
func BenchmarkModeFireAndForget(b *testing.B) { benchMode(b, false) }

func BenchmarkModeAckOrPush(b *testing.B) { benchMode(b, true) }

func benchMode(b *testing.B, ackOrPush bool) {
	rdb, prefix := testenv.Redis(b)
	reg, _ := testenv.Publisher(b, rdb, prefix, 5*time.Second)
	receipts := receipts.New(rdb, receipts.Config{Prefix: prefix, SweepEvery: 50 * time.Millisecond})
	noop := queueFunc(func(*heraldv1.Envelope) error { return nil })
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{Offline: noop, Receipts: receipts})
	if err != nil {
		b.Fatal(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub})
	if err != nil {
		b.Fatal(err)
	}
	srv := testenv.Serve(b, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(b, srv.Addr))
	r := &testRouter{client: client, rdb: rdb, reg: reg, prefix: prefix}
	drain(b, r, "bench")
	sweeper := receipts.NewSweeper(noop, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sweeper.Run(ctx) }()
	defer func() { cancel(); <-done }()

	req := &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload}
	if ackOrPush {
		req.DeliveryMode = heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH
		req.AckDeadline = durationpb.New(20 * time.Millisecond)
	}
	before := commands(b, r)
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Notify(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if ackOrPush {
			eid, _ := strconv.ParseUint(resp.GetEventId(), 10, 64)
			if res, err := receipts.Ack(ctx, "bench", []uint64{eid}, time.Now()); err != nil || res.Acked != 1 {
				b.Fatalf("ack: %+v %v", res, err)
			}
		}
	}
	b.StopTimer()
	time.Sleep(200 * time.Millisecond) // let the sweeper reach the last deadlines
	b.ReportMetric(float64(commands(b, r)-before)/float64(b.N), "redis-cmds/op")
}

// commands is the server's total_commands_processed.
func commands(b *testing.B, r *testRouter) int64 {
	info, err := r.rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no total_commands_processed in INFO")
	return 0
}
