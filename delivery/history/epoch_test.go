package history_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/integration/testenv"
)

// forget deletes every key under f's prefix: what a Redis that restarted
// without its data has of them.
func forget(tb testing.TB, f *fixture) {
	tb.Helper()
	ctx := context.Background()
	keys, err := f.RDB.Keys(ctx, f.Prefix+"*").Result()
	if err != nil {
		tb.Fatal(err)
	}
	if len(keys) == 0 {
		tb.Fatal("nothing to forget: the test stored nothing under its prefix")
	}
	if err := f.RDB.Del(ctx, keys...).Err(); err != nil {
		tb.Fatal(err)
	}
	// This loss is instant, and an event in the lost event's millisecond
	// would take its id again, since nothing remembers it (a limit
	// docs/reliability.md states, for a Redis whose clock has not passed
	// the lost ids): wait until Redis' clock has moved on, as it has after
	// a restart.
	t0, err := f.RDB.Time(ctx).Result()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		t1, err := f.RDB.Time(ctx).Result()
		if err != nil {
			tb.Fatal(err)
		}
		if t1.Sub(t0) > 2*time.Millisecond {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// since asks hist where a client at pos stands in s (from the start with
// pos 0).
func since(tb testing.TB, hist *history.Reader, s delivery.Stream, pos uint64) history.Replay {
	tb.Helper()
	after := &pos
	if pos == 0 {
		after = nil
	}
	got, err := hist.Since(context.Background(), []delivery.Stream{s}, []*uint64{after})
	if err != nil {
		tb.Fatal(err)
	}
	return got[0]
}

func newTestHistory(tb testing.TB, rdb *redis.Client, prefix string) *history.Reader {
	tb.Helper()
	hist, err := history.New(rdb, prefix, delivery.HistoryConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	return hist
}

// TestHistoryLost: after Redis lost its data, a client whose position is
// from before the loss is reset, whether at an event or at the start
// position of a stream that had none, and whether or not events came after
// the loss.
func TestHistoryLost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		fromStart  bool // the client's position is the stream's start, not an event
		eventAfter bool // an event is published after the loss
		topic      bool
	}{
		{name: "at an event, nothing since"},
		{name: "at an event, an event since", eventAfter: true},
		{name: "at the start, nothing since", fromStart: true},
		{name: "at the start, an event since", fromStart: true, eventAfter: true},
		{name: "topic at an event, nothing since", topic: true},
		{name: "topic at the start, an event since", topic: true, fromStart: true, eventAfter: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newTestPublisher(t)
			hist := newTestHistory(t, f.RDB, f.Prefix)
			s, publish := delivery.UserStream("lou"), func() uint64 { return publishEach(t, "lou", f.Pub)[0] }
			if tc.topic {
				s, publish = delivery.TopicStream("news"), func() uint64 { return broadcastTo(t, f.Pub, "news") }
			}
			pos := since(t, hist, s, 0).Position
			publish()
			if last := publish(); !tc.fromStart {
				pos = last
			}
			want := 0
			if tc.fromStart {
				want = 2
			}
			if got := since(t, hist, s, pos); got.Reset || len(got.Events) != want {
				t.Fatalf("before the loss: %+v, want the events after the client's position", got)
			}

			forget(t, f)
			var after uint64
			if tc.eventAfter {
				after = publish()
			}
			got := since(t, hist, s, pos)
			if !got.Reset {
				t.Fatalf("at %d after the loss: %+v, want a reset", pos, got)
			}
			if tc.eventAfter && got.Position != after {
				t.Fatalf("reset to %d, want the newest event %d", got.Position, after)
			}
			// From where the reset put it, the client goes on without one.
			if again := since(t, hist, s, got.Position); again.Reset || len(again.Events) != 0 {
				t.Fatalf("at the reset's position %d: %+v, want nothing", got.Position, again)
			}
		})
	}
}

// TestHistoryNotLost: without a loss, no position the history gave out is
// reset: a new client's start position in a stream with no events, with
// none since or with the stream's first events since, and an event id.
func TestHistoryNotLost(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	hist := newTestHistory(t, f.RDB, f.Prefix)
	for _, s := range []delivery.Stream{delivery.UserStream("nia"), delivery.TopicStream("quiet")} {
		start := since(t, hist, s, 0).Position
		if got := since(t, hist, s, start); got.Reset || got.Position != start || len(got.Events) != 0 {
			t.Fatalf("%v, at the start, nothing since: %+v, want nothing and the same position", s, got)
		}
	}
	user := delivery.UserStream("nia")
	start := since(t, hist, user, 0).Position
	ids := publishEach(t, "nia", f.Pub, f.Pub)
	if got := since(t, hist, user, start); got.Reset || len(got.Events) != 2 || got.Position != ids[1] {
		t.Fatalf("at the start, the stream's first events since: %+v, want both", got)
	}
	if got := since(t, hist, user, ids[0]); got.Reset || len(got.Events) != 1 {
		t.Fatalf("at the first event: %+v, want the second", got)
	}
	topic := delivery.TopicStream("quiet")
	tstart := since(t, hist, topic, 0).Position
	tid := broadcastTo(t, f.Pub, "quiet")
	if got := since(t, hist, topic, tstart); got.Reset || len(got.Events) != 1 || got.Position != tid {
		t.Fatalf("topic at the start, its first event since: %+v, want it", got)
	}
	// A start position of a stream with events is not one the history gave
	// out: it cannot say what came before.
	// The invented one: a start position (…999) between two events, so
	// an event is published in a later millisecond than the last one.
	next := publishEach(t, "nia", f.Pub)[0]
	for next/1000 == ids[1]/1000 {
		next = publishEach(t, "nia", f.Pub)[0]
	}
	if got := since(t, hist, user, next/1000*1000-1); !got.Reset {
		t.Fatalf("an invented position between events: %+v, want a reset", got)
	}
}

// TestHistoryStartPositions: event ids never end in 999, the mark of a start
// position, even when the clock would give one.
func TestHistoryStartPositions(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	hist := newTestHistory(t, f.RDB, f.Prefix)
	if pos := since(t, hist, delivery.UserStream("sol"), 0).Position; pos%1000 != 999 {
		t.Fatalf("start position %d, want one that ends in 999", pos)
	}
	// The slot's epoch outlives the start position's keep (24h), and
	// expires after.
	ttl, err := f.RDB.PTTL(context.Background(), history.EpochKey(f.Prefix, delivery.UserStream("sol"))).Result()
	if err != nil || ttl < 24*time.Hour || ttl > 48*time.Hour {
		t.Fatalf("epoch TTL %v, %v; want between 24h and 48h", ttl, err)
	}
	first := publishEach(t, "sol", f.Pub)[0]
	// The next id would be ahead of the clock, and end in 999: an hour
	// ahead, so that the clock is still behind it when the next event
	// comes, however loaded the machine.
	last := first + 3_600_000_000 - first%1000 + 998
	lastKey := strings.TrimSuffix(delivery.Channel(f.Prefix, delivery.UserStream("sol")), ":events") + ":last"
	if err := f.RDB.Set(context.Background(), lastKey, strconv.FormatUint(last, 10), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if id := publishEach(t, "sol", f.Pub)[0]; id != last+2 {
		t.Fatalf("after %d: id %d, want %d", last, id, last+2)
	}
}

// keySlot is Redis Cluster's (asked of a cluster-enabled redis-server), and
// a stream's epoch key is in the slot of the stream's keys.
func TestEpochKeySlot(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+testenv.RandomID()+".conf")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	keys := []string{"123456789", "foo", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "{", "}{x}", "herald:{u:a}b}:hist"}
	for i := range 2000 {
		for _, s := range []delivery.Stream{delivery.UserStream("u" + strconv.Itoa(i)), delivery.TopicStream("t" + strconv.Itoa(i))} {
			ek := history.EpochKey("herald:", s)
			if got, want := delivery.KeySlot(ek), delivery.KeySlot(delivery.Channel("herald:", s)); got != want {
				t.Fatalf("%v: epoch key %s in slot %d, the stream's keys in %d", s, ek, got, want)
			}
			if i%100 == 0 {
				keys = append(keys, ek, delivery.Channel("herald:", s))
			}
		}
	}
	for _, key := range keys {
		want, err := rdb.ClusterKeySlot(context.Background(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := delivery.KeySlot(key); int64(got) != want {
			t.Errorf("slot of %q = %d, Redis says %d", key, got, want)
		}
	}
}

func broadcastTo(tb testing.TB, pub *delivery.Publisher, topic string) uint64 {
	tb.Helper()
	env := envelope("", "b")
	env.UserId, env.Topic = "", topic
	res, err := pub.Broadcast(context.Background(), env)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := delivery.ParseEventID(res.EventID)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}
