package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// TestTrace: heraldctl trace shows the route an online user's and an
// offline user's notifications took, and what the worker did.
func TestTrace(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	ctx := context.Background()
	pres, err := presence.New(o.Redis, presence.Config{Prefix: o.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := delivery.NewPublisher(o.Redis, pres, delivery.PublisherConfig{Offline: o.Queue})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Devices: o.Devices})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, srv.Addr))
	o.StartWorker(t, o.WorkerConfig(), nil)

	// quinn is online: an edge-like subscriber and a live lease.
	ps := o.Redis.Subscribe(ctx, delivery.Channel(o.Prefix, delivery.UserStream("quinn")))
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close() })
	if err := pres.Lease(ctx, presence.Conn{User: "quinn", ID: "c1", Edge: "e1", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	online, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "quinn", Data: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	// rae is offline, with a device.
	o.Register(t, "rae", "tok-rae")
	offline, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "rae", Data: []byte("2")})
	if err != nil {
		t.Fatal(err)
	}
	o.WaitPushes(t, 1)

	trace := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args = append([]string{"trace"}, append(args, "-redis-addr", testenv.RedisAddr(), "-redis-prefix", o.Prefix)...)
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("heraldctl %v: exit %d: %s", args, code, stderr.String())
		}
		return stdout.String()
	}
	out := trace(online.GetNotificationId())
	if !strings.Contains(out, "online (published to 1 edge subscriber(s))") || !strings.Contains(out, "quinn") {
		t.Fatalf("trace of the online notification:\n%s", out)
	}
	testenv.WaitFor(t, 10*time.Second, "the worker's outcome in the trail", func() bool {
		out = trace(offline.GetNotificationId(), "-user", "rae")
		return strings.Contains(out, "pushed to 1 device(s)")
	})
	if !strings.Contains(out, "push_queued (offline") || !strings.Contains(out, "rae") {
		t.Fatalf("trace of the offline notification:\n%s", out)
	}
	var stderr bytes.Buffer
	if code := run([]string{"trace", "01NOSUCHNOTIFICATION000000", "-redis-addr", testenv.RedisAddr(), "-redis-prefix", o.Prefix},
		&bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "no trail") {
		t.Fatalf("unknown id: exit %d, %q", code, stderr.String())
	}
}
