package router_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testRouter struct {
	client heraldv1.RouterServiceClient
	rdb    *redis.Client
	reg    *presence.Registry
	prefix string
}

// newTestRouter serves a router on a random port against rdb (or the shared
// redis-server when rdb is nil).
func newTestRouter(tb testing.TB, rdb *redis.Client) *testRouter {
	tb.Helper()
	prefix := testenv.Prefix(tb)
	if rdb == nil {
		rdb, prefix = testenv.Redis(tb)
	}
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	svc, err := router.New(router.Config{MaxPayloadBytes: 1024}, router.Deps{Publisher: pub})
	if err != nil {
		tb.Fatal(err)
	}
	srv := testenv.Serve(tb, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	conn := testenv.GRPCClient(tb, srv.Addr)
	return &testRouter{client: heraldv1.NewRouterServiceClient(conn), rdb: rdb, reg: reg, prefix: prefix}
}

func (r *testRouter) online(tb testing.TB, user string) *redis.PubSub {
	tb.Helper()
	return testenv.Online(tb, r.rdb, r.reg, user)
}

func TestNotifyInvalidArgument(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := context.Background()
	ps := r.online(t, "alice")

	cases := []struct {
		name  string
		req   *heraldv1.NotifyRequest
		field string
	}{
		{"empty user", &heraldv1.NotifyRequest{Data: []byte("x")}, "user_id"},
		{"user with newline", &heraldv1.NotifyRequest{UserId: "alice\nbob"}, "user_id"},
		{"user too long", &heraldv1.NotifyRequest{UserId: strings.Repeat("u", 257)}, "user_id"},
		{"payload over limit", &heraldv1.NotifyRequest{UserId: "alice", Data: make([]byte, 1025)}, "data"},
		{"invalid utf-8", &heraldv1.NotifyRequest{UserId: "alice", Data: []byte{0xff, 0xfe}}, "data"},
		{"event with LF", &heraldv1.NotifyRequest{UserId: "alice", Event: "a\nb"}, "event"},
		{"event with CR", &heraldv1.NotifyRequest{UserId: "alice", Event: "a\rdata: x"}, "event"},
		{"event with NUL", &heraldv1.NotifyRequest{UserId: "alice", Event: "a\x00"}, "event"},
		{"idempotency key with tab", &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: "k\t"}, "idempotency_key"},
		{"negative ttl", &heraldv1.NotifyRequest{UserId: "alice", Ttl: durationpb.New(-time.Second)}, "ttl"},
		{"ttl beyond 28 days", &heraldv1.NotifyRequest{UserId: "alice", Ttl: durationpb.New(29 * 24 * time.Hour)}, "ttl"},
		{"unknown priority", &heraldv1.NotifyRequest{UserId: "alice", Push: &heraldv1.PushOptions{Priority: 9}}, "push.priority"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.client.Notify(ctx, tc.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
			}
			if !strings.HasPrefix(st.Message(), tc.field+":") {
				t.Errorf("message %q does not name field %q", st.Message(), tc.field)
			}
			var named bool
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						named = named || v.GetField() == tc.field
					}
				}
			}
			if !named {
				t.Errorf("BadRequest details %v do not name %q", st.Details(), tc.field)
			}
		})
	}

	// Nothing was published: the first message on alice's channel is the
	// valid notification sent after all the invalid ones.
	resp, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Event: "ok", Data: []byte("valid")})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env, err := delivery.Unmarshal([]byte(msg.Payload))
	if err != nil {
		t.Fatal(err)
	}
	if env.GetId() != resp.GetNotificationId() {
		t.Fatalf("first published notification is %s (%q), want the valid one %s", env.GetId(), env.GetData(), resp.GetNotificationId())
	}
}

func TestNotifyRoutes(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-correlation-id", "req-7")
	ps := r.online(t, "alice")

	resp, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{
		UserId: "alice", Event: "holdings", Data: []byte(`{"changed":true}`),
		Ttl:  durationpb.New(time.Minute),
		Push: &heraldv1.PushOptions{Title: "t", Priority: heraldv1.Priority_PRIORITY_HIGH},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE || resp.GetSubscribers() != 1 || resp.GetStalePresence() {
		t.Fatalf("online user: %v", resp)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env, err := delivery.Unmarshal([]byte(msg.Payload))
	if err != nil {
		t.Fatal(err)
	}
	if env.GetId() != resp.GetNotificationId() || env.GetEvent() != "holdings" || env.GetCorrelationId() != "req-7" ||
		env.GetPush().GetTitle() != "t" || !env.GetAcceptedAt().AsTime().Equal(resp.GetAcceptedAt().AsTime()) {
		t.Fatalf("envelope %v does not match response %v", env, resp)
	}
	if ttl := env.GetExpiresAt().AsTime().Sub(env.GetAcceptedAt().AsTime()); ttl != time.Minute {
		t.Errorf("envelope TTL = %v, want 1m", ttl)
	}

	resp, err = r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "bob", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || resp.GetStalePresence() || resp.GetSubscribers() != 0 {
		t.Fatalf("offline user: %v", resp)
	}

	// Presence says online, but no edge is subscribed: treated as offline.
	if err := r.reg.Lease(ctx, presence.Conn{User: "carol", ID: "c", Edge: "dead-edge", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	resp, err = r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "carol", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || !resp.GetStalePresence() {
		t.Fatalf("stale presence: %v", resp)
	}
}

func TestNotifyIdempotent(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := context.Background()
	r.online(t, "dan")
	req := &heraldv1.NotifyRequest{UserId: "dan", Data: []byte("x"), IdempotencyKey: "k1"}
	first, err := r.client.Notify(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.client.Notify(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetDuplicate() || first.GetDuplicate() || again.GetNotificationId() != first.GetNotificationId() ||
		again.GetRoute() != first.GetRoute() {
		t.Fatalf("first %v, retry %v: want the retry to be a duplicate of the first", first, again)
	}
}

func TestNotifyRedisDownIsUnavailable(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	r := newTestRouter(t, rdb)
	ctx := context.Background()
	if _, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "u"}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	_, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "u"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("with Redis down: %v, want Unavailable", err)
	}
	srv.Start()
	testenv.WaitFor(t, 5*time.Second, "Notify to succeed after Redis is back", func() bool {
		_, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "u"})
		return err == nil
	})
}

func TestNewValidates(t *testing.T) {
	if _, err := router.New(router.Config{}, router.Deps{}); err == nil {
		t.Error("New without publisher succeeded")
	}
}

func TestBroadcastValidation(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		req   *heraldv1.BroadcastRequest
		field string
	}{
		{&heraldv1.BroadcastRequest{}, "topic"},
		{&heraldv1.BroadcastRequest{Topic: "bad topic"}, "topic"},
		{&heraldv1.BroadcastRequest{Topic: ".hidden"}, "topic"},
		{&heraldv1.BroadcastRequest{Topic: "chat", Event: "a\nb"}, "event"},
		{&heraldv1.BroadcastRequest{Topic: "chat", Data: []byte{0xff}}, "data"},
	} {
		_, err := r.client.Broadcast(ctx, tc.req)
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.field+":") {
			t.Errorf("Broadcast(%v) = %v, want InvalidArgument naming %s", tc.req, err, tc.field)
		}
	}
	resp, err := r.client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: "chat.room1", Data: []byte("hi")})
	if err != nil || resp.GetEventId() == "" || resp.GetNotificationId() == "" {
		t.Fatalf("valid broadcast: %v, %v", resp, err)
	}
}
