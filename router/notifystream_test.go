package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// receiveData is the data of the next notification published on ps.
func receiveData(tb testing.TB, ps *redis.PubSub) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	env, err := delivery.Unmarshal([]byte(msg.Payload))
	if err != nil {
		tb.Fatal(err)
	}
	return string(env.GetData())
}

type notifyStreamClient = grpc.BidiStreamingClient[heraldv1.NotifyStreamRequest, heraldv1.NotifyStreamResponse]

// recvAll receives every response until the stream ends, by sequence, and
// the stream's status. A sequence answered twice fails the test.
func recvAll(tb testing.TB, s notifyStreamClient) (map[uint64]*heraldv1.NotifyStreamResponse, error) {
	tb.Helper()
	got := make(map[uint64]*heraldv1.NotifyStreamResponse)
	for {
		r, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return got, err
		}
		if _, dup := got[r.GetSequence()]; dup {
			tb.Errorf("sequence %d answered twice", r.GetSequence())
		}
		got[r.GetSequence()] = r
	}
}

// TestNotifyStream: every notification of a stream is answered once, with
// its sequence, as Notify would answer it; an invalid one, one without a
// notification and one that does not decode get INVALID_ARGUMENT in their
// own responses, and the stream goes on. Each routed one reaches its user
// once, and counts in herald_router_notify_total as a Notify.
func TestNotifyStream(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}})
	ps := r.online(t, "alice")

	s, err := r.client.NotifyStream(withKey("k1"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	invalid := map[uint64]string{
		7:   "user_id",         // no user
		100: "data",            // not UTF-8
		200: "user_id",         // no notification at all
		250: "idempotency_key", // a control character
	}
	for i := range uint64(n) {
		req := &heraldv1.NotifyStreamRequest{Sequence: 1000 + i, Notification: &heraldv1.NotifyRequest{
			UserId: "alice", Event: "e", Data: fmt.Appendf(nil, "%d", 1000+i)}}
		switch i {
		case 7:
			req.Notification.UserId = ""
		case 100:
			req.Notification.Data = []byte{0xff}
		case 200:
			req.Notification = nil
		case 250:
			req.Notification.IdempotencyKey = "k\x01"
		}
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got, err := recvAll(t, s)
	if err != nil {
		t.Fatalf("stream ended with %v, want OK", err)
	}
	if len(got) != n {
		t.Fatalf("%d responses, want %d", len(got), n)
	}
	for i := range uint64(n) {
		resp := got[1000+i]
		if field, bad := invalid[i]; bad {
			e := resp.GetError()
			if codes.Code(e.GetCode()) != codes.InvalidArgument || !strings.HasPrefix(e.GetMessage(), field+":") {
				t.Errorf("sequence %d: %v, want InvalidArgument naming %s", 1000+i, resp, field)
			}
			continue
		}
		if resp.GetResponse().GetRoute() != heraldv1.Route_ROUTE_ONLINE || resp.GetResponse().GetNotificationId() == "" {
			t.Errorf("sequence %d: %v, want routed online", 1000+i, resp)
		}
	}
	// Each routed notification reached alice once.
	seen := make(map[string]int)
	for range n - len(invalid) {
		seen[receiveData(t, ps)]++
	}
	for i := range uint64(n) {
		if _, bad := invalid[i]; !bad && seen[fmt.Sprint(1000+i)] != 1 {
			t.Errorf("notification %d reached alice %d times", 1000+i, seen[fmt.Sprint(1000+i)])
		}
	}
	if got := r.notifies(t, "online"); got != float64(n-len(invalid)) {
		t.Errorf("notify_total{route=online} = %v, want %d", got, n-len(invalid))
	}
	if got := r.notifies(t, "none"); got != float64(len(invalid)) {
		t.Errorf("notify_total{route=none} = %v, want %d", got, len(invalid))
	}
}

// TestNotifyStreamUndecodable: a message that does not decode (a user_id
// that is not UTF-8) is answered INVALID_ARGUMENT with its sequence, and
// the stream goes on.
func TestNotifyStreamUndecodable(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}})
	conn := testenv.GRPCClient(t, r.addr)
	desc := &heraldv1.RouterService_ServiceDesc.Streams[0]
	cs, err := conn.NewStream(withKey("k1"), desc, heraldv1.RouterService_NotifyStream_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	badUser := protowire.AppendTag(nil, 1, protowire.BytesType)
	badUser = protowire.AppendBytes(badUser, []byte("alice\xff"))
	bad := protowire.AppendTag(nil, 1, protowire.VarintType)
	bad = protowire.AppendVarint(bad, 41)
	bad = protowire.AppendTag(bad, 2, protowire.BytesType)
	bad = protowire.AppendBytes(bad, badUser)
	good, err := proto.Marshal(&heraldv1.NotifyStreamRequest{Sequence: 42, Notification: &heraldv1.NotifyRequest{UserId: "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []rawRequest{bad, good} {
		if err := cs.SendMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := make(map[uint64]*heraldv1.NotifyStreamResponse)
	for {
		var resp heraldv1.NotifyStreamResponse
		if err := cs.RecvMsg(&resp); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v, want OK", err)
			}
			break
		}
		got[resp.GetSequence()] = &resp
	}
	if e := got[41].GetError(); codes.Code(e.GetCode()) != codes.InvalidArgument || !strings.Contains(e.GetMessage(), "UTF-8") {
		t.Errorf("undecodable notification: %v, want InvalidArgument saying UTF-8", got[41])
	}
	if got[42].GetResponse() == nil || len(got) != 2 {
		t.Errorf("responses %v, want 42 routed after 41", got)
	}
}

// TestNotifyStreamAuth: a stream without valid credentials is refused
// UNAUTHENTICATED; a caller's stream has each notification authorised and
// rate limited on its own: the refused ones are answered PERMISSION_DENIED
// or RESOURCE_EXHAUSTED with their retry delay, and the stream goes on.
func TestNotifyStreamAuth(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"acme:*"}, Rate: 1, Burst: 3},
	})
	for name, ctx := range map[string]context.Context{"no key": context.Background(), "unknown key": withKey("nope")} {
		s, err := r.client.NotifyStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&heraldv1.NotifyStreamRequest{Sequence: 1, Notification: &heraldv1.NotifyRequest{UserId: "acme:a"}})
		if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", name, err)
		}
	}
	if n := r.refused(t, "unauthenticated"); n != 2 {
		t.Errorf("refused{unauthenticated} = %v, want 2", n)
	}

	s, err := r.client.NotifyStream(withKey("k1"))
	if err != nil {
		t.Fatal(err)
	}
	// The burst is 3 and the clock does not move: 1 and 2 are routed, 3 is
	// refused permission (and spends its call), 4 is over the rate.
	users := []string{"acme:a", "acme:b", "other:c", "acme:d"}
	got := make(map[uint64]*heraldv1.NotifyStreamResponse)
	for i, u := range users {
		if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: uint64(i + 1), Notification: &heraldv1.NotifyRequest{UserId: u}}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got[resp.GetSequence()] = resp
	}
	for _, seq := range []uint64{1, 2} {
		if got[seq].GetResponse() == nil {
			t.Errorf("sequence %d: %v, want routed", seq, got[seq])
		}
	}
	if e := got[3].GetError(); codes.Code(e.GetCode()) != codes.PermissionDenied {
		t.Errorf("sequence 3: %v, want PermissionDenied", got[3])
	}
	if e := got[4].GetError(); codes.Code(e.GetCode()) != codes.ResourceExhausted || e.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("sequence 4: %v, want ResourceExhausted with a retry delay", got[4])
	}
	// A second later the caller may send one more, on the same stream.
	r.clock.Advance(time.Second)
	if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: 5, Notification: &heraldv1.NotifyRequest{UserId: "acme:d"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Recv(); err != nil || resp.GetSequence() != 5 || resp.GetResponse() == nil {
		t.Fatalf("after a second: %v, %v; want sequence 5 routed", resp, err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if rest, err := recvAll(t, s); err != nil || len(rest) != 0 {
		t.Fatalf("end: %v, %v; want OK and nothing more", rest, err)
	}
	if n := r.refused(t, "rate_limited"); n != 1 {
		t.Errorf("refused{rate_limited} = %v, want 1", n)
	}
	if n := r.refused(t, "permission_denied"); n != 1 {
		t.Errorf("refused{permission_denied} = %v, want 1", n)
	}
	if !strings.Contains(r.logs.String(), `"caller":"orders"`) {
		t.Errorf("refusal logs do not name the caller:\n%s", r.logs.String())
	}
}

// TestNotifyStreamIdempotency: an idempotency key works across Notify and
// NotifyStream: the second of either answers duplicate, with the first's
// notification id, and the user gets it once.
func TestNotifyStreamIdempotency(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}})
	ps := r.online(t, "alice")
	ctx := withKey("k1")

	first, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: "unary-first", Data: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.client.NotifyStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range []string{"unary-first", "stream-first"} {
		if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: uint64(i), Notification: &heraldv1.NotifyRequest{
			UserId: "alice", IdempotencyKey: key, Data: []byte(fmt.Sprint(i + 2))}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got, err := recvAll(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if d := got[0].GetResponse(); !d.GetDuplicate() || d.GetNotificationId() != first.GetNotificationId() {
		t.Errorf("stream after Notify: %v, want duplicate of %s", got[0], first.GetNotificationId())
	}
	streamed := got[1].GetResponse()
	if streamed == nil || streamed.GetDuplicate() {
		t.Fatalf("stream-first: %v, want routed", got[1])
	}
	again, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: "stream-first", Data: []byte("4")})
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetDuplicate() || again.GetNotificationId() != streamed.GetNotificationId() {
		t.Errorf("Notify after the stream: %v, want duplicate of %s", again, streamed.GetNotificationId())
	}
	// alice got "1" and "3", and nothing else.
	for _, want := range []string{"1", "3"} {
		if got := receiveData(t, ps); got != want {
			t.Errorf("alice got %q, want %q", got, want)
		}
	}
	if msg, err := ps.ReceiveTimeout(context.Background(), 100*time.Millisecond); err == nil {
		t.Errorf("alice got %v too", msg)
	}
}

// gatedPublisher is a publisher whose Publish waits for the test to open
// its gate, counting the calls waiting.
type gatedPublisher struct {
	router.Publisher
	gate     chan struct{}
	mu       sync.Mutex
	waiting  int
	peak     int
	routed   map[string]bool // idempotency keys published
	released atomic.Bool
}

func newGatedPublisher(pub router.Publisher) *gatedPublisher {
	return &gatedPublisher{Publisher: pub, gate: make(chan struct{}), routed: make(map[string]bool)}
}

func (p *gatedPublisher) Publish(ctx context.Context, env *heraldv1.Envelope, key string) (delivery.Result, error) {
	p.mu.Lock()
	p.waiting++
	p.peak = max(p.peak, p.waiting)
	p.mu.Unlock()
	select {
	case <-p.gate:
	case <-ctx.Done():
		return delivery.Result{}, ctx.Err()
	}
	res, err := p.Publisher.Publish(ctx, env, key)
	p.mu.Lock()
	p.waiting--
	if err == nil {
		p.routed[key] = true
	}
	p.mu.Unlock()
	return res, err
}

func (p *gatedPublisher) open() {
	if p.released.CompareAndSwap(false, true) {
		close(p.gate)
	}
}

func (p *gatedPublisher) state() (waiting, peak int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting, p.peak
}

// countRecv counts the messages the server has received (stats.InPayload).
type countRecv struct{ n atomic.Int64 }

func (c *countRecv) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *countRecv) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c *countRecv) HandleConn(context.Context, stats.ConnStats) {}
func (c *countRecv) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.InPayload); ok {
		c.n.Add(1)
	}
}

// newGatedRouter serves a router without authentication over a gated
// publisher and the shared Redis.
func newGatedRouter(tb testing.TB, cfg router.Config, opts ...grpc.ServerOption) (*testenv.Server, *gatedPublisher, heraldv1.RouterServiceClient, *testRouter) {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	gp := newGatedPublisher(pub)
	tb.Cleanup(gp.open)
	svc, err := router.New(cfg, router.Deps{Publisher: gp, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	srv := testenv.Serve(tb, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis, opts...) })
	conn := testenv.GRPCClient(tb, srv.Addr)
	return srv, gp, heraldv1.NewRouterServiceClient(conn), &testRouter{rdb: rdb, reg: reg, prefix: prefix, client: heraldv1.NewRouterServiceClient(conn)}
}

// TestNotifyStreamInFlightBound: a stream holds at most StreamMaxInFlight
// notifications: with every publish held, the router reads no further
// (the server has received exactly the bound), and it reads on as
// notifications are answered.
func TestNotifyStreamInFlightBound(t *testing.T) {
	const bound, n = 4, 12
	recv := &countRecv{}
	_, gp, client, _ := newGatedRouter(t, router.Config{StreamMaxInFlight: bound}, grpc.StatsHandler(recv))
	s, err := client.NotifyStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(n) {
		if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: i, Notification: &heraldv1.NotifyRequest{UserId: fmt.Sprint("u", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "the bound's publishes held", func() bool { w, _ := gp.state(); return w == bound })
	// A unary call on the same connection and back: the stream's messages,
	// sent before, have reached the server by then, and a reader that did
	// not wait for a slot would have read them.
	if _, err := client.Notify(context.Background(), &heraldv1.NotifyRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatal(err)
	}
	if got := recv.n.Load(); got != bound+1 { // the bound, and the unary call's request
		t.Errorf("the server received %d messages with %d held, want %d and the unary call's", got, bound, bound)
	}
	gp.open()
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got, err := recvAll(t, s)
	if err != nil || len(got) != n {
		t.Fatalf("%d responses, %v; want %d and OK", len(got), err, n)
	}
	if _, peak := gp.state(); peak > bound {
		t.Errorf("%d publishes at once, over the bound of %d", peak, bound)
	}
}

// TestNotifyStreamGracefulStop: a router stopping answers every
// notification of a stream it has read, routes none it has not answered,
// and ends the stream UNAVAILABLE; the client sends the unanswered ones
// again to the next router, with their keys, and each user gets each
// notification once.
func TestNotifyStreamGracefulStop(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 30*time.Second)
	ps := testenv.Online(t, rdb, reg, "alice")
	gp := newGatedPublisher(pub)
	t.Cleanup(gp.open)
	svc, err := router.New(router.Config{StreamMaxInFlight: 8}, router.Deps{Publisher: gp, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	conn := testenv.GRPCClient(t, srv.Addr)
	client := heraldv1.NewRouterServiceClient(conn)

	s, err := client.NotifyStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const n = 20 // 8 read and held; the rest wait unread
	key := func(i uint64) string { return fmt.Sprint("n", i) }
	req := func(i uint64) *heraldv1.NotifyStreamRequest {
		return &heraldv1.NotifyStreamRequest{Sequence: i, Notification: &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: key(i), Data: []byte(key(i))}}
	}
	for i := range uint64(n) {
		if err := s.Send(req(i)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "8 publishes held", func() bool { w, _ := gp.state(); return w == 8 })
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	health := healthpb.NewHealthClient(conn)
	testenv.WaitFor(t, 10*time.Second, "the router draining", func() bool {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING
	})
	gp.open()
	got, err := recvAll(t, s)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	// Every answer is a routed notification, and every routed notification
	// was answered.
	gp.mu.Lock()
	routed := len(gp.routed)
	for i := range uint64(n) {
		if r, ok := got[i]; ok != gp.routed[delivery.IdempotencyKey("", key(i))] || (ok && r.GetResponse() == nil) {
			t.Errorf("notification %d: answered %v, routed %v", i, r, gp.routed[delivery.IdempotencyKey("", key(i))])
		}
	}
	gp.mu.Unlock()
	if routed < 8 || routed == n {
		t.Errorf("%d of %d routed, want the 8 read and not all", routed, n)
	}

	// The client sends the unanswered ones again, to a new router.
	svc2, err := router.New(router.Config{}, router.Deps{Publisher: pub, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc2.Serve(ctx, lis) })
	s2, err := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, srv2.Addr)).NotifyStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(n) {
		if _, ok := got[i]; !ok {
			if err := s2.Send(req(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s2.CloseSend(); err != nil {
		t.Fatal(err)
	}
	rest, err := recvAll(t, s2)
	if err != nil || len(rest)+len(got) != n {
		t.Fatalf("resent: %d answers, %v; want %d", len(rest), err, n-len(got))
	}
	seen := make(map[string]int)
	for range n {
		seen[receiveData(t, ps)]++
	}
	for i := range uint64(n) {
		if seen[key(i)] != 1 {
			t.Errorf("%s reached alice %d times", key(i), seen[key(i)])
		}
	}
}

// TestNotifyStreamIdle: a stream with nothing in flight and nothing sent
// for StreamIdleTimeout ends, OK, after answering what it was sent.
func TestNotifyStreamIdle(t *testing.T) {
	_, gp, client, _ := newGatedRouter(t, router.Config{StreamIdleTimeout: 50 * time.Millisecond})
	gp.open()
	s, err := client.NotifyStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: 9, Notification: &heraldv1.NotifyRequest{UserId: "bob"}}); err != nil {
		t.Fatal(err)
	}
	got, err := recvAll(t, s) // without CloseSend: the router ends it
	if err != nil || got[9].GetResponse() == nil || len(got) != 1 {
		t.Fatalf("%v, %v; want sequence 9 routed, then OK", got, err)
	}
}

// TestNotifyStreamTracing: with tracing on, each notification of a stream
// is a herald.notify span of the stream's trace, with its sequence, and its
// validation and publication under it.
func TestNotifyStreamTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	rdb, prefix := testenv.Redis(t)
	pres, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, pres, delivery.PublisherConfig{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, TracerProvider: tp, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	s, err := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, srv.Addr)).NotifyStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{5, 6} {
		if err := s.Send(&heraldv1.NotifyStreamRequest{Sequence: seq, Notification: &heraldv1.NotifyRequest{UserId: "carol"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if got, err := recvAll(t, s); err != nil || len(got) != 2 {
		t.Fatalf("%v, %v", got, err)
	}
	var stream sdktrace.ReadOnlySpan
	testenv.WaitFor(t, 10*time.Second, "the stream's span", func() bool {
		for _, sp := range rec.Ended() {
			if sp.Name() == "herald.v1.RouterService/NotifyStream" {
				stream = sp
			}
		}
		return stream != nil
	})
	seqs := make(map[int64]bool)
	for _, sp := range rec.Ended() {
		if sp.Name() != "herald.notify" {
			continue
		}
		if sp.Parent().SpanID() != stream.SpanContext().SpanID() {
			t.Errorf("herald.notify's parent is %v, want the stream's span", sp.Parent().SpanID())
		}
		for _, a := range sp.Attributes() {
			if a.Key == "herald.stream.sequence" {
				seqs[a.Value.AsInt64()] = true
			}
		}
		var children []string
		for _, c := range rec.Ended() {
			if c.Parent().SpanID() == sp.SpanContext().SpanID() {
				children = append(children, c.Name())
			}
		}
		if !slices.Contains(children, "herald.validate") || !slices.Contains(children, "herald.publish") {
			t.Errorf("herald.notify's children: %v, want herald.validate and herald.publish", children)
		}
	}
	if !seqs[5] || !seqs[6] || len(seqs) != 2 {
		t.Errorf("herald.notify spans of sequences %v, want 5 and 6", seqs)
	}
}
