package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// The service config shipped for other languages is the Go one, gRPC
// accepts it, and it names each routing method of the service and nothing
// the service lacks.
func TestServiceConfigFile(t *testing.T) {
	file, err := os.ReadFile("../docs/grpc-service-config.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, []byte(router.ServiceConfig)) {
		t.Fatal("docs/grpc-service-config.json differs from router.ServiceConfig: copy the constant into the file")
	}
	conn, err := grpc.NewClient("passthrough:///router",
		append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("gRPC refuses the dial options: %v", err)
	}
	conn.Close()

	var sc struct {
		MethodConfig []struct {
			Name []struct{ Service, Method string }
		}
	}
	if err := json.Unmarshal(file, &sc); err != nil {
		t.Fatal(err)
	}
	methods := make(map[string]bool)
	for _, m := range heraldv1.RouterService_ServiceDesc.Methods {
		methods[m.MethodName] = true
	}
	named := make(map[string]bool)
	for _, mc := range sc.MethodConfig {
		for _, n := range mc.Name {
			if n.Service != heraldv1.RouterService_ServiceDesc.ServiceName || !methods[n.Method] {
				t.Errorf("the config names %s/%s, which the router does not serve", n.Service, n.Method)
			}
			named[n.Method] = true
		}
	}
	for _, m := range []string{"Notify", "NotifyBatch", "Broadcast"} {
		if !named[m] {
			t.Errorf("the config does not name %s", m)
		}
	}
}

// pushbackClock advances the rate limits' fake clock by the pushback of
// each refused attempt, as the real clock will have moved when the client
// retries, and counts the pushbacks.
type pushbackClock struct {
	clock *fakeClock
	seen  atomic.Int32
}

func (p *pushbackClock) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (p *pushbackClock) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (p *pushbackClock) HandleConn(context.Context, stats.ConnStats) {}
func (p *pushbackClock) HandleRPC(_ context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok {
		return
	}
	if v := end.Trailer.Get("grpc-retry-pushback-ms"); len(v) == 1 {
		ms, err := strconv.Atoi(v[0])
		if err != nil {
			panic(fmt.Sprintf("grpc-retry-pushback-ms %q: %v", v[0], err))
		}
		p.seen.Add(1)
		p.clock.Advance(time.Duration(ms) * time.Millisecond)
	}
}

// A caller over its rate limit is told when to retry in
// grpc-retry-pushback-ms, and a client with the service config retries
// then: the call succeeds, after one refusal, for Broadcast as for Notify.
func TestRetryPolicyRateLimit(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "chatty", KeySHA256: router.HashKey("k-chatty"), Rate: 10, Burst: 1, Users: []string{"*"}, Topics: []string{"*"}},
	})
	pb := &pushbackClock{clock: r.clock}
	conn, err := grpc.NewClient(r.addr, append(router.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStatsHandler(pb))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := heraldv1.NewRouterServiceClient(conn)
	ctx, cancel := context.WithTimeout(withKey("k-chatty"), 10*time.Second)
	defer cancel()

	if _, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: "n1"}); err != nil {
		t.Fatalf("first call, within the burst: %v", err)
	}
	if _, err := client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: "news"}); err != nil {
		t.Fatalf("Broadcast over the limit, retried: %v", err)
	}
	if _, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", IdempotencyKey: "n2"}); err != nil {
		t.Fatalf("Notify over the limit, retried: %v", err)
	}
	if n := r.refused(t, "rate_limited"); n != 2 {
		t.Fatalf("refused{rate_limited} = %v, want 2: one refusal for each call over the limit", n)
	}
	if n := pb.seen.Load(); n != 2 {
		t.Fatalf("%d refusals carried grpc-retry-pushback-ms, want 2", n)
	}
	// The plain client, without the config, sees the refusal and its hint.
	var trailer metadata.MD
	_, err = r.client.Notify(withKey("k-chatty"), &heraldv1.NotifyRequest{UserId: "alice"}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("without the config: %v, want ResourceExhausted", err)
	}
	if v := trailer.Get("grpc-retry-pushback-ms"); len(v) != 1 || v[0] != "100" {
		t.Fatalf("grpc-retry-pushback-ms %q, want [100]", v)
	}
}

// A request too large for the router fails in the caller with the dial
// options, at once and once, instead of being sent again on each
// RESOURCE_EXHAUSTED the router's transport would answer.
func TestDialOptionsRefuseOversizedRequest(t *testing.T) {
	var attempts atomic.Int32
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(countBegins{&attempts}))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(),
		append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = heraldv1.NewRouterServiceClient(conn).Broadcast(ctx,
		&heraldv1.BroadcastRequest{Topic: "news", Data: make([]byte, router.DefaultMaxRequestBytes)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized request: %v, want ResourceExhausted from the client", err)
	}
	if n := attempts.Load(); n != 0 {
		t.Fatalf("the server saw %d attempts of the oversized request, want 0", n)
	}
}

// countBegins counts the calls a server begins.
type countBegins struct{ n *atomic.Int32 }

func (c countBegins) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c countBegins) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c countBegins) HandleConn(context.Context, stats.ConnStats) {}
func (c countBegins) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.Begin); ok {
		c.n.Add(1)
	}
}

// holder holds one armed Notify after the router has routed it, until the
// router stops: the caller's connection is cut with the notification
// routed and its answer unsent, the case a retry must not route twice.
type holder struct {
	mu    sync.Mutex
	armed chan struct{} // closed when a call is held; nil when disarmed
}

func (h *holder) arm() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed = make(chan struct{})
	return h.armed
}

func (h *holder) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if info.FullMethod != heraldv1.RouterService_Notify_FullMethodName || err != nil {
		return resp, err
	}
	h.mu.Lock()
	held := h.armed
	h.armed = nil
	h.mu.Unlock()
	if held != nil {
		close(held)
		<-ctx.Done() // the router's hard stop
	}
	return resp, err
}

// A router restarted twice behind a client with the dial options: every
// call of callers that keep calling through the restarts succeeds, and
// each notification reaches its user once, although the two calls held
// across the restarts were routed, cut off and sent again.
func TestRetryAcrossRouterRestart(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 30*time.Second)
	users := []string{"u0", "u1", "u2", "u3"}
	subs := make(map[string]<-chan string)
	for _, u := range users {
		ps := testenv.Online(t, rdb, reg, u)
		ch := make(chan string, 1<<14)
		go func() {
			for m := range ps.Channel() {
				env, err := delivery.Unmarshal([]byte(m.Payload))
				if err != nil {
					ch <- "undecodable: " + err.Error()
					continue
				}
				ch <- string(env.GetData())
			}
		}()
		subs[u] = ch
	}

	hold := &holder{}
	addr := "127.0.0.1:0"
	serve := func() *testenv.Server {
		// ShutdownTimeout: a held call makes each stop a hard one.
		svc, err := router.New(router.Config{ShutdownTimeout: 50 * time.Millisecond}, router.Deps{
			Publisher: pub, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		srv := testenv.ServeOn(t, addr, func(ctx context.Context, lis net.Listener) error {
			return svc.Serve(ctx, lis, grpc.ChainUnaryInterceptor(hold.intercept))
		})
		addr = srv.Addr
		return srv
	}
	srv := serve()
	conn, err := grpc.NewClient(addr, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := heraldv1.NewRouterServiceClient(conn)

	// Callers: each sends Notify calls, and every fifth call a NotifyBatch
	// of three, each notification with a key of its own and that key as
	// its data, until told to stop.
	var (
		stop, calls, dups atomic.Int64
		wg                sync.WaitGroup
		mu                sync.Mutex
		sent              = make(map[string][]string) // user -> keys
		errs              []error
	)
	for g := range 6 {
		wg.Go(func() {
			for i := 0; stop.Load() == 0; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				var keys []string
				var err error
				user := users[(g+i)%len(users)]
				if i%5 == 4 {
					req := &heraldv1.NotifyBatchRequest{}
					for j := range 3 {
						k := fmt.Sprintf("g%d-c%d-b%d", g, i, j)
						keys = append(keys, k)
						req.Notifications = append(req.Notifications, &heraldv1.NotifyRequest{UserId: user, IdempotencyKey: k, Data: []byte(k)})
					}
					var resp *heraldv1.NotifyBatchResponse
					if resp, err = client.NotifyBatch(ctx, req); err == nil {
						for j, r := range resp.GetResults() {
							if r.GetCode() != int32(codes.OK) {
								err = fmt.Errorf("batch item %d: %s: %s", j, codes.Code(r.GetCode()), r.GetMessage())
							}
						}
					}
				} else {
					k := fmt.Sprintf("g%d-c%d", g, i)
					keys = append(keys, k)
					var resp *heraldv1.NotifyResponse
					resp, err = client.Notify(ctx, &heraldv1.NotifyRequest{UserId: user, IdempotencyKey: k, Data: []byte(k)})
					if resp.GetDuplicate() {
						dups.Add(1)
					}
				}
				cancel()
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%v: %w", keys, err))
				}
				sent[user] = append(sent[user], keys...)
				mu.Unlock()
				calls.Add(1)
			}
		})
	}

	defer func() { stop.Store(1); wg.Wait() }() // on a failure too

	const restarts = 2
	for range restarts {
		select {
		case <-hold.arm():
		case <-time.After(20 * time.Second):
			t.Fatal("no Notify call was held: the callers are not calling")
		}
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		srv = serve()
		// Let the callers make calls to the new router before the next.
		after := calls.Load()
		testenv.WaitFor(t, 20*time.Second, "calls to the restarted router", func() bool { return calls.Load() >= after+30 })
	}
	stop.Store(1)
	wg.Wait()

	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	// Each held call was routed, then retried: its retry found the key.
	// (A call slower than the graceful stop may have been cut too.)
	if n := dups.Load(); n < restarts {
		t.Errorf("%d Notify answers said duplicate, want at least %d, one per held call", n, restarts)
	}
	// What each user received: every key once, then the marker, and
	// nothing else.
	for _, u := range users {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: u, Data: []byte("marker")}); err != nil {
			t.Fatal(err)
		}
		cancel()
		want := make(map[string]bool)
		for _, k := range sent[u] {
			want[k] = true
		}
		got := make(map[string]int)
		for done := false; !done; {
			select {
			case d := <-subs[u]:
				if d == "marker" {
					done = true
					break
				}
				got[d]++
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no marker after %d notifications", u, len(got))
			}
		}
		for k, n := range got {
			if !want[k] || n != 1 {
				t.Errorf("%s received %q %d times; it was sent %v", u, k, n, want[k])
			}
		}
		for k := range want {
			if got[k] == 0 {
				t.Errorf("%s never received %q", u, k)
			}
		}
	}
	t.Logf("%d calls through %d restarts", calls.Load(), restarts)
}
