package delivery_test

import (
	"context"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
)

// TestHistoryExpiry: a history stream expires between 1.1 and 1.2 windows
// after its newest event. Its expiry is set by the first event of each
// tenth of the window; a stream lost while its last id survived (evicted)
// is made again with an expiry, never without one.
func TestHistoryExpiry(t *testing.T) {
	t.Parallel()
	const window = 10 * time.Minute
	f := newPublisherWith(t, delivery.PublisherConfig{History: delivery.HistoryConfig{Window: window}})
	ctx := context.Background()
	keys := delivery.HistoryKeys(f.Prefix, delivery.UserStream("eve"))
	ttl := func(what string, lo, hi time.Duration) {
		t.Helper()
		got, err := f.RDB.PTTL(ctx, keys[0]).Result()
		if err != nil || got <= lo || got > hi {
			t.Fatalf("%s: the history's ttl is %v, %v; want it in (%v, %v]", what, got, err, lo, hi)
		}
	}
	publish := func() uint64 {
		t.Helper()
		r, err := f.Pub.Publish(ctx, envelope("eve", "x"), "")
		if err != nil {
			t.Fatal(err)
		}
		id, err := delivery.ParseEventID(r.EventID)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	tenth := func(id uint64) uint64 { return id / 1000 / uint64((window / 10).Milliseconds()) }

	first := publish()
	ttl("after the first event", window+window/10-time.Minute, window+window/5)

	// An event in the same tenth leaves the expiry; one in the next sets it.
	if err := f.RDB.PExpire(ctx, keys[0], window/2).Err(); err != nil {
		t.Fatal(err)
	}
	if second := publish(); tenth(second) == tenth(first) {
		ttl("after an event in the same tenth", 0, window/2)
	} else {
		ttl("after an event in the next tenth", window, window+window/5)
	}

	// The stream is lost, its last id is not: the next event makes it
	// again, with an expiry.
	if err := f.RDB.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if n := f.RDB.Exists(ctx, keys[1]).Val(); n != 1 {
		t.Fatalf("the last id is gone too (%d)", n)
	}
	publish()
	ttl("after the stream was lost", window, window+window/5)
	if n := f.RDB.XLen(ctx, keys[0]).Val(); n != 1 {
		t.Fatalf("the remade stream holds %d entries, want 1", n)
	}
}
