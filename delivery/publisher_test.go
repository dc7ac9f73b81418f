package delivery_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

type fixture struct {
	rdb    *redis.Client
	reg    *presence.Registry
	pub    *delivery.Publisher
	prefix string
}

func newTestPublisher(tb testing.TB) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	return &fixture{rdb: rdb, reg: reg, pub: pub, prefix: prefix}
}

// newPublisherWith returns a fixture whose publisher has cfg.
func newPublisherWith(tb testing.TB, cfg delivery.PublisherConfig) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	return newPublisherOn(tb, rdb, prefix, cfg)
}

// newPublisherOn returns a fixture on rdb, under prefix, whose publisher has
// cfg.
func newPublisherOn(tb testing.TB, rdb *redis.Client, prefix string, cfg delivery.PublisherConfig) *fixture {
	tb.Helper()
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return &fixture{rdb: rdb, reg: reg, pub: pub, prefix: prefix}
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

// subscribe listens on user's channel the way an edge does.
func (f *fixture) subscribe(tb testing.TB, user string) *redis.PubSub {
	tb.Helper()
	ps := f.rdb.Subscribe(context.Background(), delivery.Channel(f.prefix, delivery.UserStream(user)))
	if _, err := ps.Receive(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ps.Close() })
	return ps
}

func (f *fixture) online(tb testing.TB, user string) {
	tb.Helper()
	c := presence.Conn{User: user, ID: "c-" + user, Edge: "edge", Since: time.Now()}
	if err := f.reg.Lease(context.Background(), c); err != nil {
		tb.Fatal(err)
	}
}

func envelope(user, data string) *heraldv1.Envelope {
	now := time.Now()
	return &heraldv1.Envelope{
		Id:         delivery.NewID(now),
		UserId:     user,
		Event:      "update",
		Data:       []byte(data),
		AcceptedAt: timestamppb.New(now),
	}
}

func TestPublishOnline(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	ps := f.subscribe(t, "alice")
	f.online(t, "alice")
	env := envelope("alice", `{"n":1}`)
	res, err := f.pub.Publish(context.Background(), env, "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != delivery.RouteOnline || res.Subscribers != 1 || res.ID != env.Id || res.Duplicate {
		t.Fatalf("Publish = %+v, want online to 1 subscriber with id %s", res, env.Id)
	}
	msg, err := ps.ReceiveMessage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := delivery.Unmarshal([]byte(msg.Payload))
	if err != nil {
		t.Fatal(err)
	}
	if res.EventID == "" || got.GetEventId() != res.EventID {
		t.Fatalf("published event id %q, result %q", got.GetEventId(), res.EventID)
	}
	env.EventId = res.EventID
	if !proto.Equal(got, env) {
		t.Fatalf("published %v, want %v", got, env)
	}
}

func TestPublishOfflineAndStale(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	ctx := context.Background()

	res, err := f.pub.Publish(ctx, envelope("bob", "x"), "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != delivery.RouteOffline || res.Subscribers != 0 {
		t.Fatalf("offline user: %+v, want route offline", res)
	}

	// A lease with nobody subscribed: an edge died before its lease expired.
	f.online(t, "carol")
	res, err = f.pub.Publish(ctx, envelope("carol", "x"), "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != delivery.RouteStale || res.Subscribers != 0 {
		t.Fatalf("stale presence: %+v, want route stale", res)
	}
}

func TestPublishIdempotent(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	ctx := context.Background()
	ps := f.subscribe(t, "dan")
	f.online(t, "dan")

	first, err := f.pub.Publish(ctx, envelope("dan", "one"), "order-42")
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.pub.Publish(ctx, envelope("dan", "two"), "order-42")
	if err != nil {
		t.Fatal(err)
	}
	if !second.Duplicate || second.ID != first.ID || second.Route != first.Route ||
		second.Subscribers != first.Subscribers || second.AcceptedAt.UnixMilli() != first.AcceptedAt.UnixMilli() {
		t.Fatalf("retry = %+v, want duplicate of %+v", second, first)
	}
	// The same key for another user is another notification.
	other, err := f.pub.Publish(ctx, envelope("erin", "x"), "order-42")
	if err != nil || other.Duplicate {
		t.Fatalf("other user with same key = %+v, %v; want not duplicate", other, err)
	}
	// A third, distinct publish proves the retry was not published: it must be
	// the second message on the channel.
	marker := envelope("dan", "marker")
	if _, err := f.pub.Publish(ctx, marker, ""); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.Id)
	}
	if ids[0] != first.ID || ids[1] != marker.Id {
		t.Fatalf("channel carried %v, want [%s %s]", ids, first.ID, marker.Id)
	}
}

func TestNewID(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	prev := ""
	base := time.Now()
	for i := range 1000 {
		id := delivery.NewID(base.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 26 || strings.Trim(id, "0123456789ABCDEFGHJKMNPQRSTVWXYZ") != "" {
			t.Fatalf("NewID = %q, want 26 Crockford base32 characters", id)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		if id <= prev {
			t.Fatalf("NewID not time-ordered: %q after %q", id, prev)
		}
		seen[id], prev = true, id
	}
}

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
	hist, err := delivery.NewHistory(rdb, prefix, delivery.HistoryConfig{})
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
	if _, err := pub.Publish(ctx, envelope("hal", "3"), ""); err != nil { // trims event 0
		t.Fatal(err)
	}
	got, _ = hist.Since(ctx, s, []*uint64{&ids[0]})
	if got[0].Reset || len(got[0].Events) != 3 {
		t.Fatalf("after event 0 (still covered): %+v, want 3 events", got)
	}
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
	hist, err := delivery.NewHistory(f.rdb, f.prefix, delivery.HistoryConfig{Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ids := publishEach(t, "tia", f.pub, f.pub)
	time.Sleep(300 * time.Millisecond) // events 0 and 1 are now older than the router's window
	ids = append(ids, publishEach(t, "tia", f.pub)...)
	ctx := context.Background()
	s := []delivery.Stream{delivery.UserStream("tia")}
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
	hist, err := delivery.NewHistory(rdb, prefix, delivery.HistoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := publishEach(t, "ivy", publisher(5), publisher(5), publisher(5), publisher(5), publisher(5), publisher(2))
	// Events 0 to 3 were trimmed; 4 and 5 are kept.
	s := []delivery.Stream{delivery.UserStream("ivy")}
	got, err := hist.Since(ctx, s, []*uint64{&ids[3]})
	if err != nil || got[0].Reset || len(got[0].Events) != 2 {
		t.Fatalf("after the newest trimmed event: %+v, %v; want events 4 and 5", got, err)
	}
	if got, _ = hist.Since(ctx, s, []*uint64{&ids[2]}); !got[0].Reset {
		t.Fatalf("before the newest trimmed event: %+v, want a reset", got)
	}
}
