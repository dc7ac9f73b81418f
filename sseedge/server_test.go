package sseedge_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

func TestMain(m *testing.M) {
	// go-redis' pool retries a failed dial (Redis down, in the restart
	// tests) from a goroutine that sleeps a second first and outlives
	// Close by up to that second.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

var secret = []byte("edge-test-secret")

type testEdge struct {
	url     string
	srv     *testenv.Server
	rdb     *redis.Client
	reg     *presence.Registry
	pub     *delivery.Publisher
	metrics *prometheus.Registry
	lastID  string
}

func newTestEdge(tb testing.TB, cfg sseedge.Config) *testEdge {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	return newTestEdgeOn(tb, rdb, prefix, cfg)
}

// newTestEdgeOn serves an edge on rdb under prefix.
func newTestEdgeOn(tb testing.TB, rdb *redis.Client, prefix string, cfg sseedge.Config) *testEdge {
	tb.Helper()
	return newTestEdgeWrapped(tb, rdb, prefix, cfg, nil)
}

// newTestEdgeWrapped is newTestEdgeOn serving on wrap(listener), unless wrap
// is nil.
func newTestEdgeWrapped(tb testing.TB, rdb *redis.Client, prefix string, cfg sseedge.Config, wrap func(net.Listener) net.Listener) *testEdge {
	tb.Helper()
	if cfg.DrainPeriod == 0 {
		cfg.DrainPeriod = 100 * time.Millisecond
	}
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	metrics := prometheus.NewRegistry()
	cfg.JWTSecret = secret
	edge, err := sseedge.New(cfg, sseedge.Deps{Redis: rdb, Presence: reg, Registerer: metrics})
	if err != nil {
		tb.Fatal(err)
	}
	serve := edge.Serve
	if wrap != nil {
		serve = func(ctx context.Context, lis net.Listener) error { return edge.Serve(ctx, wrap(lis)) }
	}
	srv := testenv.Serve(tb, serve)
	return &testEdge{url: "http://" + srv.Addr, srv: srv, rdb: rdb, reg: reg, pub: pub, metrics: metrics}
}

func (e *testEdge) open(tb testing.TB, tok string) *http.Response {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("status %s", resp.Status)
	}
	return resp
}

// send publishes data to user as the router would, and returns the route.
func (e *testEdge) send(tb testing.TB, user string, data []byte) delivery.Route {
	tb.Helper()
	now := time.Now()
	env := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: user, Data: data, AcceptedAt: timestamppb.New(now)}
	res, err := e.pub.Publish(context.Background(), env, "")
	if err != nil {
		tb.Fatal(err)
	}
	e.lastID = res.EventID
	return res.Route
}

// publish sends data to user, who must be online, and returns the id.
func (e *testEdge) publish(tb testing.TB, user string, data []byte) string {
	tb.Helper()
	if route := e.send(tb, user, data); route != delivery.RouteOnline {
		tb.Fatalf("publish to %s: route %s", user, route)
	}
	return e.lastID
}

// closed reads herald_sse_connections_closed_total{reason} from the edge's
// /metrics page, as Prometheus would.
func (e *testEdge) closed(reason sseedge.CloseReason) float64 {
	return e.metric(`herald_sse_connections_closed_total{reason="` + string(reason) + `"}`)
}

// metric reads the sample named name (with its labels) from the edge's
// /metrics page, or -1 if there is none.
func (e *testEdge) metric(name string) float64 {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(e.metrics, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func tokenFor(tb testing.TB, user string, ttl time.Duration) string {
	tb.Helper()
	tok, err := sseedge.IssueToken(secret, user, ttl, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func TestHeadersRetryAndHeartbeat(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{Heartbeat: 50 * time.Millisecond, Retry: 1500 * time.Millisecond})
	resp := e.open(t, tokenFor(t, "hana", time.Hour))
	for k, want := range map[string]string{
		"Content-Type":      "text/event-stream; charset=utf-8",
		"Cache-Control":     "no-cache",
		"X-Accel-Buffering": "no",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	var wire strings.Builder
	buf := make([]byte, 512)
	for !strings.Contains(wire.String(), ": hb\n\n") {
		n, err := resp.Body.Read(buf)
		wire.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v after %q", err, wire.String())
		}
	}
	if !strings.HasPrefix(wire.String(), "retry: 1500\n\n") {
		t.Errorf("stream starts %q, want a retry: 1500 field", wire.String())
	}
}

func TestTokenExpiryClosesStream(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	// JWT exp has whole-second precision: the token lasts 2 to 3 s, long
	// enough for the stream to open on a loaded machine.
	resp := e.open(t, tokenFor(t, "ivan", 3*time.Second))
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stream ended with %v, want EOF", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stream outlived its token")
	}
	// Counted before the client can see the end.
	if n := e.closed(sseedge.CloseTokenExpired); n != 1 {
		t.Errorf("token_expired = %v once the stream ended, want 1", n)
	}
}

// A client that stops reading is closed as slow_consumer, while 100 other
// clients on the same edge keep receiving every event as it is published.
// Memory stays bounded by construction: the stalled client's queue holds at
// most QueueSize events.
func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 16, WriteTimeout: 5 * time.Second})

	// The stalled client never reads, and has a small receive buffer so that
	// the edge's writes block soon.
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	stalled := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, "slow", time.Hour), nil)
	resp, err := stalled.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	const fast = 100
	var received [fast]atomic.Int64
	for i := range fast {
		tok, _ := sseedge.IssueToken(secret, "fan"+strconv.Itoa(i), time.Hour, time.Now(), "ticks")
		body := e.open(t, tok+"&topic=ticks").Body
		go func() {
			dec := sseedge.NewDecoder(body)
			for {
				ev, err := dec.Next()
				if err != nil {
					return
				}
				if ev.Data == "tick" {
					received[i].Add(1)
				}
			}
		}()
	}

	big := []byte(strings.Repeat("x", 256<<10))
	for tick := int64(1); e.send(t, "slow", big) == delivery.RouteOnline; tick++ {
		if tick > 2000 {
			t.Fatal("the stalled client was never closed as slow_consumer")
		}
		e.broadcast(t, "ticks", "tick")
		// Every fast client gets each tick before the next one is sent.
		testenv.WaitFor(t, 5*time.Second, "every fast client to get tick "+strconv.FormatInt(tick, 10), func() bool {
			for i := range received {
				if received[i].Load() < tick {
					return false
				}
			}
			return true
		})
	}
	testenv.WaitFor(t, 5*time.Second, "slow_consumer to be counted", func() bool {
		return e.closed(sseedge.CloseSlowConsumer) == 1
	})
	if got := e.closed(sseedge.CloseWriteTimeout); got != 0 {
		t.Errorf("write_timeout counted %v times; the close must count once, as slow_consumer", got)
	}
}

// broadcast publishes data on topic as the router would.
func (e *testEdge) broadcast(tb testing.TB, topic, data string) {
	tb.Helper()
	now := time.Now()
	env := &heraldv1.Envelope{Id: delivery.NewID(now), Topic: topic, Data: []byte(data), AcceptedAt: timestamppb.New(now)}
	if _, err := e.pub.Broadcast(context.Background(), env); err != nil {
		tb.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	for _, tc := range []struct {
		method, url string
		status      int
		code        string
	}{
		{http.MethodPost, "/v1/events?access_token=" + tokenFor(t, "x", time.Hour), http.StatusMethodNotAllowed, "method_not_allowed"},
		{http.MethodGet, "/v1/events", http.StatusUnauthorized, "unauthorized"},
	} {
		req, _ := http.NewRequest(tc.method, e.url+tc.url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || body.Error != tc.code {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.url, resp.StatusCode, body.Error, tc.status, tc.code)
		}
	}
}
