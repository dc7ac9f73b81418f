package history_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
)

// History answers where a client stands: events after its position, in
// order; its position unchanged when nothing is new; a reset when events it
// may have missed were trimmed.
func TestHistorySince(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{History: delivery.HistoryConfig{Length: 3}})
	if err != nil {
		t.Fatal(err)
	}
	hist, err := history.New(rdb, prefix, delivery.HistoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := []delivery.Stream{delivery.UserStream("hal")}
	start, err := hist.Since(ctx, s, []*uint64{nil})
	if err != nil {
		t.Fatal(err)
	}
	pos := start[0].Position
	var ids []uint64
	for i := range 3 {
		res, err := pub.Publish(ctx, envelope("hal", strconv.Itoa(i)), "")
		if err != nil {
			t.Fatal(err)
		}
		id, _ := delivery.ParseEventID(res.EventID)
		if len(ids) > 0 && id <= ids[len(ids)-1] {
			t.Fatalf("event ids do not increase: %d after %v", id, ids)
		}
		ids = append(ids, id)
	}
	got, err := hist.Since(ctx, s, []*uint64{&pos})
	if err != nil || got[0].Reset || len(got[0].Events) != 3 || got[0].Position != ids[2] {
		t.Fatalf("from the start: %+v, %v; want the 3 events", got, err)
	}
	got, _ = hist.Since(ctx, s, []*uint64{&ids[2]})
	if got[0].Reset || len(got[0].Events) != 0 {
		t.Fatalf("at the head: %+v, want nothing", got)
	}
	ids = publishUntilTrimmed(t, rdb, prefix, "hal", pub, ids)
	checkFloor(t, hist, rdb, prefix, "hal", ids)
	got, _ = hist.Since(ctx, s, []*uint64{&pos})
	if !got[0].Reset {
		t.Fatalf("from before the trimmed event: %+v, want a reset", got)
	}
}

// TestHistoryTimeTrimFloor: events that left the history for age (here the
// whole key expired) raise the floor, so a reader whose window is longer
// than the router's (a misconfigured edge) still resets a client from before
// them instead of skipping them silently; a client after them misses
// nothing.
func TestHistoryTimeTrimFloor(t *testing.T) {
	t.Parallel()
	f := newPublisherWith(t, delivery.PublisherConfig{History: delivery.HistoryConfig{Window: 200 * time.Millisecond}})
	hist, err := history.New(f.RDB, f.Prefix, delivery.HistoryConfig{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ids := publishEach(t, "tia", f.Pub, f.Pub)
	ctx := context.Background()
	s := []delivery.Stream{delivery.UserStream("tia")}
	log := delivery.HistoryKeys(f.Prefix, s[0])[0]
	// Gone past its expiry, a window and two tenths after event 1: events 0
	// and 1 are older than the router's window.
	testenv.WaitFor(t, 10*time.Second, "the history of events 0 and 1 to expire", func() bool {
		n, err := f.RDB.Exists(ctx, log).Result()
		return err == nil && n == 0
	})
	ids = append(ids, publishEach(t, "tia", f.Pub)...)
	// Event 2's history would expire 240 ms on, and the reads below, on a
	// loaded machine, could come after: the test is of the floor, not of
	// how fast it reads.
	if kept, err := f.RDB.Persist(ctx, log).Result(); err != nil || !kept {
		t.Fatalf("persist %s: %v, %v; want event 2's history kept", log, kept, err)
	}
	if got, err := hist.Since(ctx, s, []*uint64{&ids[0]}); err != nil || !got[0].Reset {
		t.Errorf("from event 0, before the trimmed event 1: %+v, %v; want a reset", got, err)
	}
	if got, err := hist.Since(ctx, s, []*uint64{&ids[1]}); err != nil || got[0].Reset || len(got[0].Events) != 1 {
		t.Errorf("from event 1, the newest trimmed: %+v, %v; want event 2", got, err)
	}
}

// TestHistoryShrunk: a history longer than its length (the length was
// lowered) is trimmed at the next event, and its floor rises to the newest
// event trimmed: a client there missed nothing, one before it is reset.
func TestHistoryShrunk(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	publisher := func(length int) *delivery.Publisher {
		pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{History: delivery.HistoryConfig{Length: length}})
		if err != nil {
			t.Fatal(err)
		}
		return pub
	}
	hist, err := history.New(rdb, prefix, delivery.HistoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	long := publisher(1000)
	var ids []uint64
	for range 250 { // more than two full stream nodes, none trimmed
		ids = append(ids, publishEach(t, "ivy", long)...)
	}
	if k := oldestKept(t, rdb, prefix, "ivy", ids); k != 0 {
		t.Fatalf("the oldest entry is event %d; want 0", k)
	}
	ids = append(ids, publishEach(t, "ivy", publisher(2))...)
	if k := oldestKept(t, rdb, prefix, "ivy", ids); k < 2 {
		t.Fatalf("after an event with a length of 2, the oldest entry is event %d; want whole nodes trimmed", k)
	}
	checkFloor(t, hist, rdb, prefix, "ivy", ids)
}

// TestHistoryAheadOfLast: a history whose newest entry is ahead of the
// last id (the last id was evicted, or the clock went back) takes the next
// event after its newest entry, and a client at that entry gets exactly it.
func TestHistoryAheadOfLast(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	ctx := context.Background()
	keys := delivery.HistoryKeys(f.Prefix, delivery.UserStream("ada"))
	ahead := uint64(time.Now().Add(time.Hour).UnixMilli())*1000 + 5
	if err := f.RDB.XAdd(ctx, &redis.XAddArgs{Stream: keys[0], ID: strconv.FormatUint(ahead/1000, 10) + "-5",
		Values: []any{"d", "x", "p", "0"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.RDB.Del(ctx, keys[1]).Err(); err != nil {
		t.Fatal(err)
	}
	id := publishEach(t, "ada", f.Pub)[0]
	if id != ahead+1 {
		t.Fatalf("event id %d, want %d: the one after the history's newest", id, ahead+1)
	}
	hist := newTestHistory(t, f.RDB, f.Prefix)
	if got := since(t, hist, delivery.UserStream("ada"), ahead); got.Reset || len(got.Events) != 1 || got.Position != id {
		t.Fatalf("at the newest entry before it: %+v, want the one event", got)
	}
}
