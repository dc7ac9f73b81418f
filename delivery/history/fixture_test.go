package history_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/integration/testenv"
)

// fixture is a publisher that writes the histories the tests read.
type fixture = testenv.PublisherFixture

func newTestPublisher(tb testing.TB) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	return &fixture{RDB: rdb, Reg: reg, Pub: pub, Prefix: prefix}
}

// newPublisherWith returns a fixture whose publisher has cfg.
func newPublisherWith(tb testing.TB, cfg delivery.PublisherConfig) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	return testenv.PublisherOn(tb, rdb, prefix, cfg)
}

// publishEach publishes an event to user through each of pubs in turn and
// returns their event ids.
func publishEach(tb testing.TB, user string, pubs ...*delivery.Publisher) []uint64 {
	tb.Helper()
	var ids []uint64
	for i, pub := range pubs {
		res, err := pub.Publish(context.Background(), envelope(user, strconv.Itoa(i)), "")
		if err != nil {
			tb.Fatal(err)
		}
		id, err := delivery.ParseEventID(res.EventID)
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

var envelope = testenv.Envelope

// publishUntilTrimmed publishes to user through pub until the user's
// history no longer holds ids[0], and returns ids with the new events'.
// Redis trims a stream in whole nodes (of at most 100 entries, by default),
// so that takes at most the history's length and a node.
func publishUntilTrimmed(tb testing.TB, rdb *redis.Client, prefix, user string, pub *delivery.Publisher, ids []uint64) []uint64 {
	tb.Helper()
	for range 1000 {
		if k := oldestKept(tb, rdb, prefix, user, ids); k > 0 {
			return ids
		}
		ids = append(ids, publishEach(tb, user, pub)...)
	}
	tb.Fatalf("event %d is still in the history after 1,000 more", ids[0])
	return nil
}

// oldestKept returns the index in ids of the user's oldest history entry
// (-1 for none of them).
func oldestKept(tb testing.TB, rdb *redis.Client, prefix, user string, ids []uint64) int {
	tb.Helper()
	key := delivery.HistoryKeys(prefix, delivery.UserStream(user))[0]
	oldest, err := rdb.XRangeN(context.Background(), key, "-", "+", 1).Result()
	if err != nil || len(oldest) != 1 {
		tb.Fatalf("oldest entry of %s: %v, %v", key, oldest, err)
	}
	ms, seq, _ := strings.Cut(oldest[0].ID, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	s, _ := strconv.ParseUint(seq, 10, 64)
	return slices.Index(ids, m*1000+s)
}

// checkFloor checks that a client at the newest event trimmed from the
// user's history (ids: every event of it, in order) gets every event
// after it, and one before it a reset.
func checkFloor(tb testing.TB, hist *history.Reader, rdb *redis.Client, prefix, user string, ids []uint64) {
	tb.Helper()
	k := oldestKept(tb, rdb, prefix, user, ids)
	if k < 1 {
		tb.Fatalf("the oldest entry is event %d of %d: none was trimmed", k, len(ids))
	}
	ctx := context.Background()
	s := []delivery.Stream{delivery.UserStream(user)}
	got, err := hist.Since(ctx, s, []*uint64{&ids[k-1]})
	if err != nil || got[0].Reset || len(got[0].Events) != len(ids)-k || got[0].Position != ids[len(ids)-1] {
		tb.Fatalf("from the newest trimmed event, %d of %d: reset %v, %d events, %v; want the %d after it",
			k-1, len(ids), got[0].Reset, len(got[0].Events), err, len(ids)-k)
	}
	if k < 2 {
		return
	}
	if got, err = hist.Since(ctx, s, []*uint64{&ids[k-2]}); err != nil || !got[0].Reset {
		tb.Fatalf("from before the newest trimmed event: reset %v, %v; want a reset", got[0].Reset, err)
	}
}
