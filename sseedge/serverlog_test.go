package sseedge

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// recorder is a slog handler that keeps the records' levels and messages.
type recorder struct {
	mu  sync.Mutex
	got []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) levels() map[slog.Level]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[slog.Level]int{}
	for _, rec := range r.got {
		out[rec.Level]++
	}
	return out
}

// net/http's error lines: accept errors are counted, each one, and logged at
// Warn once a second at most; a handler's panic at Error; what clients do at
// Debug.
func TestServerLog(t *testing.T) {
	rec := &recorder{}
	accepts := prometheus.NewCounter(prometheus.CounterOpts{Name: "accepts"})
	l := newServerLog(slog.New(rec), accepts)
	for range 3 {
		l.Printf("http: Accept error: accept tcp [::]:8080: accept4: too many open files; retrying in 5ms")
	}
	l.Printf("http: TLS handshake error from 10.0.0.7:51234: EOF")
	l.Printf("http: panic serving 10.0.0.7:51234: boom")
	if n := testutil.ToFloat64(accepts); n != 3 {
		t.Errorf("accept errors counted: %v, want 3", n)
	}
	want := map[slog.Level]int{slog.LevelWarn: 1, slog.LevelDebug: 1, slog.LevelError: 1}
	if got := rec.levels(); !maps.Equal(got, want) {
		t.Errorf("records by level %v, want %v (three accept errors within a second make one line)", got, want)
	}
}
