package sseedge_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// The scenario of issue 15: streams open, Redis down for some seconds (it
// restarts without its data), one new stream attempted during the outage
// (503), Redis back. No open stream closes, well inside BrokerGrace, and a
// notification published after Redis returns reaches every stream once.
// The Redis client is the production one (cmd/internal/daemon: default
// options), whose pooled connections to the old server fail the first
// commands after the restart.
func TestRedisReturnKeepsStreams(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	e := newTestEdgeOn(t, rdb, "p:", sseedge.Config{BrokerGrace: 30 * time.Second})

	users := []string{"ann", "bob", "cid"}
	decs := make([]*sseedge.Decoder, len(users))
	bodies := make([]io.Closer, len(users))
	for i, u := range users {
		tok, _ := sseedge.IssueToken(secret, u, time.Hour, time.Now(), "news")
		// Opening reads history and leases presence: the client's pool
		// holds connections to the server about to die.
		body := e.open(t, tok+"&topic=news").Body
		decs[i], bodies[i] = sseedge.NewDecoder(body), body
	}
	// A read that never ends fails the test instead of hanging it.
	watchdog := time.AfterFunc(2*time.Minute, func() {
		for _, b := range bodies {
			b.Close()
		}
	})
	defer watchdog.Stop()
	srv.Stop()
	testenv.WaitFor(t, 10*time.Second, "the edge to see its link down", func() bool {
		return e.metric("herald_sse_redis_links") == 0
	})
	resp, err := http.Get(e.url + "/v1/events?access_token=" + tokenFor(t, "dan", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a stream opened during the outage: %s, want 503", resp.Status)
	}
	// Down for some seconds, as in the trial: go-redis' reconnect backoff
	// grows meanwhile.
	outage := time.NewTimer(3 * time.Second)
	<-outage.C
	srv.Start()
	testenv.WaitFor(t, 15*time.Second, "the edge to relink", func() bool {
		return e.metric("herald_sse_redis_links") == 1 && e.metric("herald_sse_redis_orphaned_channels") == 0
	})

	// The restarted Redis lost the leases; the edge renews them.
	testenv.WaitFor(t, 10*time.Second, "the streams' presence to be renewed", func() bool {
		if n := e.closed(sseedge.CloseBrokerLost); n > 0 {
			t.Fatalf("%v streams closed broker_lost after Redis came back", n)
		}
		on, err := e.reg.Online(context.Background(), users...)
		if err != nil {
			return false
		}
		for _, u := range users {
			if on[u] == 0 {
				return false
			}
		}
		return true
	})
	// The restarted Redis lost the history the streams' positions point
	// into: each stream's catch-up tells its client with herald.reset
	// (delivery/history/epoch.go), and then goes on live.
	for i, u := range users {
		for {
			ev, err := decs[i].Next()
			if err != nil {
				t.Fatalf("%s's stream ended before its reset (%v); closes: broker_lost %v", u, err, e.closed(sseedge.CloseBrokerLost))
			}
			if ev.Event == sseedge.ResetEvent {
				break
			}
		}
	}
	// One notification per user and one broadcast, after Redis returned.
	for _, u := range users {
		e.publish(t, u, []byte("after-"+u))
	}
	e.broadcast(t, "news", "after-all")
	for i, u := range users {
		got := map[string]int{}
		for got["after-"+u] == 0 || got["after-all"] == 0 {
			ev, err := decs[i].Next()
			if err != nil {
				t.Fatalf("%s's stream ended (%v); closes: broker_lost %v", u, err, e.closed(sseedge.CloseBrokerLost))
			}
			got[ev.Data]++
		}
		if got["after-"+u] != 1 || got["after-all"] != 1 {
			t.Errorf("%s got %v, want each notification once", u, got)
		}
	}
	// A last notification: anything duplicated would have come before it.
	for i, u := range users {
		e.publish(t, u, []byte("last"))
		for {
			ev, err := decs[i].Next()
			if err != nil {
				t.Fatalf("%s's stream ended: %v", u, err)
			}
			if ev.Data == "after-"+u || ev.Data == "after-all" {
				t.Errorf("%s got %q twice", u, ev.Data)
			}
			if ev.Data == "last" {
				break
			}
		}
	}
	for _, r := range []sseedge.CloseReason{sseedge.CloseBrokerLost, sseedge.CloseWriteError, sseedge.CloseSlowConsumer} {
		if n := e.closed(r); n != 0 {
			t.Errorf("%v streams closed %s", n, r)
		}
	}
	if n := e.metric("herald_sse_connections_open"); n != float64(len(users)) {
		t.Errorf("%v streams open, want %d", n, len(users))
	}
}
