package sseedge_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/sseedge"
)

// TestReadyFlips: the edge's readiness (its /readyz) fails while Redis is
// down and while the edge drains, and holds otherwise.
func TestReadyFlips(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	reg, err := presence.New(rdb, presence.Config{})
	if err != nil {
		t.Fatal(err)
	}
	edge, err := sseedge.New(sseedge.Config{JWTSecret: secret, DrainPeriod: 2 * time.Second},
		sseedge.Deps{Redis: rdb, Presence: reg, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edge.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	ready := func() error {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		defer rcancel()
		return edge.Ready(rctx)
	}
	testenv.WaitFor(t, 5*time.Second, "the edge to be ready", func() bool { return ready() == nil })

	srv.Stop()
	if err := ready(); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Fatalf("Ready with Redis down = %v, want a redis error", err)
	}
	srv.Start()
	testenv.WaitFor(t, 5*time.Second, "ready again once Redis is back", func() bool { return ready() == nil })

	// A stream keeps the drain going for its period.
	req, _ := http.NewRequest(http.MethodGet, "http://"+lis.Addr().String()+"/v1/events?access_token="+tokenFor(t, "pat", time.Hour), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", resp.Status)
	}
	cancel()
	testenv.WaitFor(t, 2*time.Second, "not ready while draining", func() bool {
		err := ready()
		return err != nil && strings.Contains(err.Error(), "draining")
	})
}
