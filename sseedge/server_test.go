package sseedge_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
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

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var secret = []byte("edge-test-secret")

type testEdge struct {
	url     string
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
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	metrics := prometheus.NewRegistry()
	cfg.JWTSecret = secret
	edge, err := sseedge.New(cfg, sseedge.Deps{Redis: rdb, Presence: reg, Registerer: metrics})
	if err != nil {
		tb.Fatal(err)
	}
	srv := testenv.Serve(tb, edge.Serve)
	return &testEdge{url: "http://" + srv.Addr, rdb: rdb, reg: reg, pub: pub, metrics: metrics}
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
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(e.metrics, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	prefix := `herald_sse_connections_closed_total{reason="` + string(reason) + `"} `
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
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
	// JWT exp has whole-second precision: the stream ends within 2s.
	resp := e.open(t, tokenFor(t, "ivan", 1500*time.Millisecond))
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stream ended with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream outlived its token")
	}
	testenv.WaitFor(t, 2*time.Second, "token_expired to be counted", func() bool {
		return e.closed(sseedge.CloseTokenExpired) == 1
	})
}

// A client that stops reading is closed as slow_consumer, and another
// client on the same edge keeps receiving.
func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4, WriteTimeout: 500 * time.Millisecond})
	slow := e.open(t, tokenFor(t, "slow", time.Hour))
	_ = slow // never read: the socket buffers fill, then the queue
	fast := e.open(t, tokenFor(t, "fast", time.Hour))
	dec := sseedge.NewDecoder(fast.Body)

	big := []byte(strings.Repeat("x", 60<<10))
	for i := 0; ; i++ {
		if i > 2000 {
			t.Fatal("the stalled client was never closed as slow_consumer")
		}
		if e.send(t, "slow", big) != delivery.RouteOnline {
			break // closed and its lease removed
		}
		id := e.publish(t, "fast", []byte("tick"))
		for {
			ev, err := dec.Next()
			if err != nil {
				t.Fatal(err)
			}
			if ev.ID == id {
				break
			}
		}
	}
	testenv.WaitFor(t, 5*time.Second, "slow_consumer to be counted", func() bool {
		return e.closed(sseedge.CloseSlowConsumer) == 1
	})
	if got := e.closed(sseedge.CloseWriteTimeout); got != 0 {
		t.Errorf("write_timeout counted %v times; the close must count once, as slow_consumer", got)
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
