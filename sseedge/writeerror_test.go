package sseedge

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
)

// brokenWriter is a ResponseWriter whose connection fails on write, as a
// socket does after the peer vanished without the request being canceled.
type brokenWriter struct{ *httptest.ResponseRecorder }

func (brokenWriter) Write([]byte) (int, error) { return 0, errors.New("write: broken pipe") }

// A failed write closes the stream as write_error, counted once.
func TestCloseWriteError(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	s, err := New(Config{JWTSecret: []byte("k"), DrainPeriod: 10 * time.Millisecond},
		Deps{Redis: rdb, Presence: reg, Registerer: metrics})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return s.Serve(ctx, lis) })
	_ = srv
	testenv.WaitFor(t, 5*time.Second, "the hub to start", func() bool { return s.currentHub() != nil })

	tok, _ := IssueToken([]byte("k"), "wendy", time.Hour, time.Now())
	req := httptest.NewRequest(http.MethodGet, "/v1/events?access_token="+tok, nil)
	s.handleEvents(brokenWriter{httptest.NewRecorder()}, req)
	if got := testutil.ToFloat64(s.metrics.closed.WithLabelValues(string(CloseWriteError))); got != 1 {
		t.Fatalf("write_error = %v, want 1", got)
	}
	if n, _ := reg.Online(context.Background(), "wendy"); n["wendy"] != 0 {
		t.Fatalf("lease left behind after write_error: %d", n["wendy"])
	}
}
