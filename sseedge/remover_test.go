package sseedge_test

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/sseedge"
)

// TestMassDisconnectRemovesLeases: when hundreds of clients close at once,
// their leases are removed (in batches), not left to expire: the lease TTL
// here is a minute, far beyond the wait.
func TestMassDisconnectRemovesLeases(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	edge, err := sseedge.New(sseedge.Config{JWTSecret: secret, DrainPeriod: 100 * time.Millisecond},
		sseedge.Deps{Redis: rdb, Presence: reg, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, edge.Serve)

	const n = 300
	users := make([]string, n)
	cancels := make([]context.CancelFunc, n)
	for i := range n {
		users[i] = "mass-" + strconv.Itoa(i)
		ctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
			"http://"+srv.Addr+"/v1/events?access_token="+tokenFor(t, users[i], time.Hour), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %s", i, resp.Status)
		}
		t.Cleanup(func() { resp.Body.Close() })
	}
	online := func() int {
		m, err := reg.Online(context.Background(), users...)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, c := range m {
			total += c
		}
		return total
	}
	if got := online(); got != n {
		t.Fatalf("%d online before the disconnect, want %d", got, n)
	}
	var wg sync.WaitGroup
	for _, cancel := range cancels {
		wg.Go(cancel)
	}
	wg.Wait()
	testenv.WaitFor(t, 15*time.Second, "every lease removed", func() bool { return online() == 0 })
}
