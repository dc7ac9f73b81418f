package presence_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
)

func TestAnnounceEdgesWithdraw(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := newTestRegistry(t, 5*time.Second)
	if got, err := reg.Edges(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Edges on an empty registry = %v, %v; want none", got, err)
	}
	started := time.Now().Add(-time.Hour)
	b := presence.Edge{ID: "edge-b", Version: "v1.2.3+0123456789ab", Addr: "10.0.0.2:8080",
		Started: started, Connections: 7, Updated: time.Now()}
	a := presence.Edge{ID: "edge-a", Version: "devel", Addr: "10.0.0.1:8080", Started: started, Updated: time.Now()}
	for _, e := range []presence.Edge{b, a} {
		if err := reg.Announce(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := reg.Edges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "edge-a" || got[1].ID != "edge-b" {
		t.Fatalf("Edges = %+v, want edge-a and edge-b, by id", got)
	}
	g := got[1]
	if g.Version != b.Version || g.Addr != b.Addr || g.Connections != 7 || g.Draining ||
		!g.Started.Equal(started) || !g.Updated.Equal(b.Updated) {
		t.Errorf("edge-b read back as %+v, want %+v", g, b)
	}
	if until := time.Until(g.Expires); until <= 0 || until > 6*time.Second {
		t.Errorf("edge-b expires in %v, want within the lease TTL (5s)", until)
	}

	// A renewal replaces the record.
	b.Connections, b.Draining = 3, true
	if err := reg.Announce(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, _ = reg.Edges(ctx)
	if len(got) != 2 || got[1].Connections != 3 || !got[1].Draining {
		t.Fatalf("after renewal Edges = %+v, want edge-b with 3 connections, draining", got)
	}

	// A clean stop removes the record at once.
	if err := reg.Withdraw(ctx, "edge-b"); err != nil {
		t.Fatal(err)
	}
	got, _ = reg.Edges(ctx)
	if len(got) != 1 || got[0].ID != "edge-a" {
		t.Fatalf("after withdrawing edge-b Edges = %+v, want edge-a alone", got)
	}

	if err := reg.Announce(ctx, presence.Edge{Version: "x"}); !errors.Is(err, presence.ErrInvalidEdge) {
		t.Errorf("Announce without an id = %v, want ErrInvalidEdge", err)
	}
}

// An edge that stops announcing itself (it died) drops out of Edges within
// the lease TTL, and its record is cleaned up by the next announcement.
func TestEdgeRecordExpires(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	// The record must outlive an announcement's sleep (a third of it) and
	// the read after it on a loaded machine.
	ttl := time.Second
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	live := presence.Edge{ID: "live", Started: time.Now()}
	dead := presence.Edge{ID: "dead", Started: time.Now()}
	if err := reg.Announce(ctx, dead); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Renew only "live", as a running edge would.
	for time.Since(start) < 2*ttl {
		live.Updated = time.Now()
		if err := reg.Announce(ctx, live); err != nil {
			t.Fatal(err)
		}
		time.Sleep(reg.RenewInterval())
	}
	got, err := reg.Edges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "live" {
		t.Fatalf("Edges = %+v, want live alone (dead stopped announcing)", got)
	}
	if n := rdb.HLen(ctx, reg.EdgesInfoKey()).Val(); n != 1 {
		t.Errorf("%d records stored, want 1: the dead edge's record should be cleaned up", n)
	}
	if pttl := rdb.PTTL(ctx, reg.EdgesKey()).Val(); pttl <= 0 || pttl > ttl {
		t.Errorf("edges key expires in %v, want within the TTL, with its last record", pttl)
	}

	// Once every edge is gone, so are the keys.
	testenv.WaitFor(t, 5*time.Second, "the edge registry's keys to expire", func() bool {
		return rdb.Exists(ctx, reg.EdgesKey(), reg.EdgesInfoKey()).Val() == 0
	})
}
