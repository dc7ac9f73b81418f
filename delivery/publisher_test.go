package delivery_test

import (
	"context"
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
