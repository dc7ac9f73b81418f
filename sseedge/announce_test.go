package sseedge_test

import (
	"context"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/sseedge"
)

// An edge is listed in the edge registry while it serves, with its address
// and open streams, shows as draining while it drains, and is gone as soon
// as it has stopped.
func TestEdgeAnnouncesItself(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	// Announcements are renewed every third of the lease TTL: 100ms.
	reg, pub := testenv.Publisher(t, rdb, prefix, 300*time.Millisecond)
	edge, err := sseedge.New(sseedge.Config{JWTSecret: secret, EdgeID: "edge-1", DrainPeriod: time.Second},
		sseedge.Deps{Redis: rdb, Presence: reg})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	srv := testenv.Serve(t, edge.Serve)
	e := &testEdge{url: "http://" + srv.Addr, rdb: rdb, reg: reg, pub: pub}

	var rec presence.Edge
	announced := func(cond func(presence.Edge) bool) func() bool {
		return func() bool {
			edges, err := reg.Edges(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, got := range edges {
				if got.ID == edge.EdgeID() {
					rec = got
					return cond(got)
				}
			}
			return false
		}
	}
	testenv.WaitFor(t, 5*time.Second, "the edge to announce itself", announced(func(presence.Edge) bool { return true }))
	if rec.Addr != srv.Addr || rec.Version == "" || rec.Draining || rec.Connections != 0 ||
		rec.Started.Before(start.Add(-time.Second)) || rec.Started.After(time.Now()) {
		t.Errorf("announced %+v; want address %s, a version, not draining, no connections, started now", rec, srv.Addr)
	}

	e.open(t, tokenFor(t, "ann", time.Hour))
	e.open(t, tokenFor(t, "bea", time.Hour))
	testenv.WaitFor(t, 5*time.Second, "the announcement to count 2 connections",
		announced(func(r presence.Edge) bool { return r.Connections == 2 }))

	// Stop as SIGTERM would; with two streams the drain lasts DrainPeriod/2.
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	testenv.WaitFor(t, 5*time.Second, "the announcement to say draining",
		announced(func(r presence.Edge) bool { return r.Draining }))
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	edges, err := reg.Edges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range edges {
		if got.ID == edge.EdgeID() {
			t.Fatalf("a stopped edge is still listed: %+v", got)
		}
	}
}
