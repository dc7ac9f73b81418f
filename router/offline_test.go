package router_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// queueFunc is an offline queue whose answer the test chooses.
type queueFunc func(*heraldv1.Envelope) error

func (f queueFunc) Enqueue(_ context.Context, env *heraldv1.Envelope) error { return f(env) }

// TestNotifyOfflineQueue: the offline route answers ROUTE_PUSH_QUEUED when
// the queue takes the notification, and Unavailable, counted as a Kafka
// error, when it does not; RegisterDevice without a registry is
// Unimplemented.
func TestNotifyOfflineQueue(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	pres, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var queued []*heraldv1.Envelope
	fail := false
	q := queueFunc(func(env *heraldv1.Envelope) error {
		if fail {
			return errors.New("kafka: connection refused")
		}
		queued = append(queued, env)
		return nil
	})
	pub, err := delivery.NewPublisher(rdb, pres, delivery.PublisherConfig{Offline: q})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Registerer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, srv.Addr))
	ctx := context.Background()

	resp, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "olga", Data: []byte("x"), IdempotencyKey: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED || len(queued) != 1 || queued[0].GetId() != resp.GetNotificationId() ||
		queued[0].GetEventId() != resp.GetEventId() {
		t.Fatalf("Notify = %v, queued %v; want ROUTE_PUSH_QUEUED with the envelope and its event id queued", resp, queued)
	}
	again, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "olga", Data: []byte("x"), IdempotencyKey: "a"})
	if err != nil || !again.GetDuplicate() || again.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED || len(queued) != 1 {
		t.Fatalf("retry: %v, %v; want the queued first call as a duplicate, queued once", again, err)
	}

	fail = true
	_, err = client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "olga", Data: []byte("y"), IdempotencyKey: "b"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("queue down: %v, want Unavailable", err)
	}
	line := logs.String()
	if !strings.Contains(line, `"msg":"notify failed"`) || !strings.Contains(line, `"route":"none"`) ||
		!strings.Contains(line, `"notification_id":"`) || !strings.Contains(line, redact.HashUser("olga")) ||
		strings.Contains(line, `"olga"`) {
		t.Fatalf("failure log %q: want the notification id, the route and the user's hash, not the user id", line)
	}
	fail = false
	resp, err = client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "olga", Data: []byte("y"), IdempotencyKey: "b"})
	if err != nil || resp.GetDuplicate() || resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("retry once the queue is back: %v, %v; want it queued, not a duplicate", resp, err)
	}
	mfs, _ := reg.Gather()
	var kafkaErrors, offlineLookups float64
	for _, mf := range mfs {
		switch mf.GetName() {
		case "herald_router_kafka_errors_total":
			kafkaErrors = mf.GetMetric()[0].GetCounter().GetValue()
		case "herald_router_presence_lookups_total":
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "offline" {
					offlineLookups = m.GetCounter().GetValue()
				}
			}
		}
	}
	if kafkaErrors != 1 {
		t.Fatalf("herald_router_kafka_errors_total = %v, want 1", kafkaErrors)
	}
	// Two calls were routed and answered; the duplicate and the refused one
	// are not counted.
	if offlineLookups != 2 {
		t.Fatalf("herald_router_presence_lookups_total{result=offline} = %v, want 2", offlineLookups)
	}

	// Ack-or-push needs receipts, which this publisher lacks; bad ack
	// settings are the caller's error.
	ackOrPush := heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH
	if _, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "olga", DeliveryMode: ackOrPush}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("ack-or-push without receipts: %v, want FailedPrecondition", err)
	}
	for _, bad := range []*heraldv1.NotifyRequest{
		{UserId: "olga", AckDeadline: durationpb.New(time.Second)},
		{UserId: "olga", DeliveryMode: ackOrPush, AckDeadline: durationpb.New(2 * time.Hour)},
		{UserId: "olga", DeliveryMode: ackOrPush, AckDeadline: durationpb.New(-time.Second)},
		{UserId: "olga", DeliveryMode: heraldv1.DeliveryMode(9)},
	} {
		if _, err := client.Notify(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Notify(%v) = %v, want InvalidArgument", bad, err)
		}
	}

	_, err = client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: "olga", Token: "t", Platform: heraldv1.Platform_PLATFORM_IOS})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("RegisterDevice without a registry: %v, want Unimplemented", err)
	}
}
