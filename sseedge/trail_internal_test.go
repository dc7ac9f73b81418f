package sseedge

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
)

// A Redis that lost its scripts (restarted, failed over, flushed) gets the
// trail script again, and each count lands once; a trail that does not exist
// (expired, or never kept) is not created.
func TestTrailFlushReloadsScript(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	tr := newTrail(rdb, "p:")
	key := delivery.TraceKey("p:", "ann", "n1")
	if err := rdb.HSet(ctx, key, "route", "online").Err(); err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1_764_000_000_123)
	for round, want := range []string{"3", "6"} {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		pending := map[string]*trailCount{
			"n1": {user: "ann", n: 3, first: at},
			"n2": {user: "bob", n: 1, first: at},
		}
		marks := []trailWrite{{user: "ann", id: "n1", at: at, field: "acked_ms"}}
		tr.flush(ctx, pending, marks)
		got, err := rdb.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got["sse_writes"] != want || got["sse_first_ms"] != "1764000000123" || got["acked_ms"] != "1764000000123" {
			t.Errorf("round %d: trail %v, want sse_writes %s and both times 1764000000123", round+1, got, want)
		}
		if n, _ := rdb.Exists(ctx, delivery.TraceKey("p:", "bob", "n2")).Result(); n != 0 {
			t.Errorf("round %d: a trail that was not kept was created", round+1)
		}
	}
}

// The trail holds at most trailQueue writes and marks between two ticks: the
// rest are dropped, not held. A run writes what was queued, counted once per
// write.
func TestTrailQueueBoundedAndFlushed(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	tr := newTrail(rdb, "p:")
	at := time.UnixMilli(1_764_000_000_123)
	for range trailQueue + 100 {
		tr.add("ann", "over", at)
	}
	if q := tr.take(nil); len(q) != trailQueue {
		t.Fatalf("queued %d writes, want the bound %d", len(q), trailQueue)
	}
	if q := tr.take(nil); len(q) != 0 {
		t.Fatalf("a second take returned %d writes, want none", len(q))
	}

	key := delivery.TraceKey("p:", "ann", "n1")
	if err := rdb.HSet(ctx, key, "route", "online").Err(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tr.add("ann", "n1", at)
	}
	tr.mark("ann", "n1", "acked_ms", at)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); tr.run(rctx) }()
	deadline := time.Now().Add(10 * time.Second)
	var got map[string]string
	for time.Now().Before(deadline) {
		var err error
		if got, err = rdb.HGetAll(ctx, key).Result(); err != nil {
			t.Fatal(err)
		}
		if got["sse_writes"] == "3" && got["acked_ms"] != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if got["sse_writes"] != "3" || got["sse_first_ms"] != "1764000000123" || got["acked_ms"] != "1764000000123" {
		t.Fatalf("trail %v, want sse_writes 3 and sse_first_ms, acked_ms 1764000000123", got)
	}
}
