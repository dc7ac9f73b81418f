package delivery_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
)

// fixture is a publisher with its presence registry.
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

var envelope = testenv.Envelope

func TestPublishOnline(t *testing.T) {
	t.Parallel()
	f := newTestPublisher(t)
	ps := f.Subscribe(t, "alice")
	f.Lease(t, "alice")
	env := envelope("alice", `{"n":1}`)
	res, err := f.Pub.Publish(context.Background(), env, "")
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

	res, err := f.Pub.Publish(ctx, envelope("bob", "x"), "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != delivery.RouteOffline || res.Subscribers != 0 {
		t.Fatalf("offline user: %+v, want route offline", res)
	}

	// A lease with nobody subscribed: an edge died before its lease expired.
	f.Lease(t, "carol")
	res, err = f.Pub.Publish(ctx, envelope("carol", "x"), "")
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
	ps := f.Subscribe(t, "dan")
	f.Lease(t, "dan")

	first, err := f.Pub.Publish(ctx, envelope("dan", "one"), "order-42")
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.Pub.Publish(ctx, envelope("dan", "two"), "order-42")
	if err != nil {
		t.Fatal(err)
	}
	if !second.Duplicate || second.ID != first.ID || second.Route != first.Route ||
		second.Subscribers != first.Subscribers || second.AcceptedAt.UnixMilli() != first.AcceptedAt.UnixMilli() {
		t.Fatalf("retry = %+v, want duplicate of %+v", second, first)
	}
	// The same key for another user is another notification.
	other, err := f.Pub.Publish(ctx, envelope("erin", "x"), "order-42")
	if err != nil || other.Duplicate {
		t.Fatalf("other user with same key = %+v, %v; want not duplicate", other, err)
	}
	// A third, distinct publish proves the retry was not published: it must be
	// the second message on the channel.
	marker := envelope("dan", "marker")
	if _, err := f.Pub.Publish(ctx, marker, ""); err != nil {
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
