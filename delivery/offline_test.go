package delivery_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/trail"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// newOfflinePublisher is a publisher whose offline route is q.
func newOfflinePublisher(tb testing.TB, q delivery.OfflineQueue) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{Offline: q, PendingTimeout: 2 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	return &fixture{RDB: rdb, Reg: reg, Pub: pub, Prefix: prefix}
}

func kafkaQueue(tb testing.TB, brokers []string) *queue.Kafka {
	tb.Helper()
	q, err := queue.NewKafka(queue.Config{Brokers: brokers, WriteTimeout: time.Second, MaxAttempts: 1},
		queue.DefaultOfflineTopic)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { q.Close() })
	return q
}

func TestOfflineQueuedToKafka(t *testing.T) {
	t.Parallel()
	k := testenv.StartKafka(t, 4)
	f := newOfflinePublisher(t, kafkaQueue(t, k.Brokers))
	ctx := context.Background()

	envs := map[string]*heraldv1.Envelope{}
	for _, user := range []string{"dave", "erin", "dave"} {
		env := envelope(user, `{"n":1}`)
		res, err := f.Pub.Publish(ctx, env, "")
		if err != nil {
			t.Fatal(err)
		}
		if res.Route != delivery.RouteOffline || !res.Queued || res.EventID == "" {
			t.Fatalf("offline user %s: %+v, want offline and queued", user, res)
		}
		envs[res.ID] = env
	}
	msgs := k.ReadAll(queue.DefaultOfflineTopic)
	if len(msgs) != 3 {
		t.Fatalf("offline topic holds %d records, want 3", len(msgs))
	}
	partition := map[string]int{}
	for _, m := range msgs {
		got, err := delivery.Unmarshal(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		want := envs[got.GetId()]
		if want == nil || string(m.Key) != want.GetUserId() || got.GetEventId() == "" || string(got.GetData()) != `{"n":1}` {
			t.Fatalf("record key %q value %v does not match a queued notification", m.Key, got)
		}
		if p, seen := partition[string(m.Key)]; seen && p != m.Partition {
			t.Fatalf("user %s's records are in partitions %d and %d; one user must keep to one", m.Key, p, m.Partition)
		}
		partition[string(m.Key)] = m.Partition
	}
}

func TestOfflineKafkaDownIsNotAcknowledged(t *testing.T) {
	t.Parallel()
	k := testenv.StartKafka(t, 1)
	f := newOfflinePublisher(t, kafkaQueue(t, k.Brokers))
	ctx := context.Background()

	k.Stop()
	first := envelope("frank", "x")
	_, err := f.Pub.Publish(ctx, first, "key-1")
	var oe *delivery.OfflineError
	if !errors.As(err, &oe) {
		t.Fatalf("Publish with Kafka down: %v, want an *OfflineError", err)
	}

	// The failed call left a refused record: the retry queues the
	// notification the failed call recorded in history, under its id, not
	// answered as a duplicate of something never queued, nor recorded anew.
	k.Start()
	env := envelope("frank", "x")
	var res delivery.Result
	testenv.WaitFor(t, 10*time.Second, "a publish once Kafka is back", func() bool {
		res, err = f.Pub.Publish(ctx, env, "key-1")
		return err == nil
	})
	if res.Duplicate || !res.Queued || res.ID != first.Id {
		t.Fatalf("retry after Kafka came back: %+v, want the failed call's notification %s queued", res, first.Id)
	}
	again, err := f.Pub.Publish(ctx, envelope("frank", "x"), "key-1")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || !again.Queued || again.ID != first.Id || again.EventID != res.EventID {
		t.Fatalf("third call: %+v, want the queued first call's result %+v as a duplicate", again, res)
	}
	msgs := k.ReadAll(queue.DefaultOfflineTopic)
	if len(msgs) != 1 {
		t.Fatalf("offline topic holds %d records, want exactly the one acknowledged", len(msgs))
	}
}

// blockingQueue holds every Enqueue until released.
type blockingQueue struct {
	entered chan struct{}
	release chan error
}

func (q *blockingQueue) Enqueue(ctx context.Context, env *heraldv1.Envelope) error {
	q.entered <- struct{}{}
	return <-q.release
}

func TestOfflineSameKeyInFlight(t *testing.T) {
	t.Parallel()
	q := &blockingQueue{entered: make(chan struct{}, 1), release: make(chan error, 1)}
	f := newOfflinePublisher(t, q)
	ctx := context.Background()

	var wg sync.WaitGroup
	var first delivery.Result
	var firstErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		first, firstErr = f.Pub.Publish(ctx, envelope("gina", "x"), "k")
	}()
	<-q.entered
	if _, err := f.Pub.Publish(ctx, envelope("gina", "x"), "k"); !errors.Is(err, delivery.ErrInFlight) {
		t.Fatalf("same key while the first call is queueing: %v, want ErrInFlight", err)
	}
	q.release <- nil
	wg.Wait()
	if firstErr != nil || !first.Queued {
		t.Fatalf("first call: %+v, %v", first, firstErr)
	}
	dup, err := f.Pub.Publish(ctx, envelope("gina", "x"), "k")
	if err != nil || !dup.Duplicate || dup.ID != first.ID {
		t.Fatalf("after the first call: %+v, %v; want its duplicate", dup, err)
	}
}

func TestOfflineOnlineUserIsNotQueued(t *testing.T) {
	t.Parallel()
	q := &blockingQueue{entered: make(chan struct{}, 1), release: make(chan error, 1)}
	f := newOfflinePublisher(t, q)
	f.Subscribe(t, "hank")
	f.Lease(t, "hank")
	res, err := f.Pub.Publish(context.Background(), envelope("hank", "x"), "k")
	if err != nil || res.Route != delivery.RouteOnline || res.Queued {
		t.Fatalf("online user: %+v, %v; want online and not queued", res, err)
	}
	select {
	case <-q.entered:
		t.Fatal("an online user's notification was queued for the offline path")
	default:
	}
}

func TestTrace(t *testing.T) {
	t.Parallel()
	k := testenv.StartKafka(t, 1)
	f := newOfflinePublisher(t, kafkaQueue(t, k.Brokers))
	ctx := context.Background()
	env := envelope("jo", "x")
	env.CorrelationId = "req-7"
	res, err := f.Pub.Publish(ctx, env, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"jo", ""} { // direct, and by scanning
		tr, err := trail.Find(ctx, f.RDB, f.Prefix, user, res.ID)
		if err != nil {
			t.Fatalf("trail.Find(user %q): %v", user, err)
		}
		if tr.Fields["user"] != "jo" || tr.Fields["route"] != "offline" || tr.Fields["event_id"] != res.EventID ||
			tr.Fields["correlation_id"] != "req-7" || tr.Time("queued_ms").IsZero() || tr.Time("accepted_ms").IsZero() {
			t.Fatalf("trail %v, want jo's offline, queued notification with its event and correlation ids", tr.Fields)
		}
		if ttl := f.RDB.PTTL(ctx, tr.Key).Val(); ttl <= 0 || ttl > delivery.DefaultTraceTTL {
			t.Fatalf("trail TTL %v, want at most %v", ttl, delivery.DefaultTraceTTL)
		}
	}
	trail.Add(ctx, f.RDB, f.Prefix, "jo", res.ID, "fcm_sent_ms", 1, "fcm_devices", 2)
	trail.Add(ctx, f.RDB, f.Prefix, "jo", "no-such-id", "fcm_sent_ms", 1)
	tr, _ := trail.Find(ctx, f.RDB, f.Prefix, "jo", res.ID)
	if tr.Fields["fcm_devices"] != "2" {
		t.Fatalf("trail after trail.Add: %v", tr.Fields)
	}
	if _, err := trail.Find(ctx, f.RDB, f.Prefix, "jo", "no-such-id"); !errors.Is(err, trail.ErrNotKept) {
		t.Fatalf("trail.Add created a trail that was not kept, or trail.Find found one: %v", err)
	}
}

// TestPublisherClock: the times the publisher writes in a trail are its
// Config.Now's.
func TestPublisherClock(t *testing.T) {
	t.Parallel()
	at := time.UnixMilli(1_700_000_000_123)
	f := newPublisherWith(t, delivery.PublisherConfig{Offline: &recordingQueue{}, Now: func() time.Time { return at }})
	ctx := context.Background()
	res, err := f.Pub.Publish(ctx, envelope("clo", "x"), "")
	if err != nil || !res.Queued {
		t.Fatalf("publish to an offline user: %+v, %v; want it queued", res, err)
	}
	tr, err := trail.Find(ctx, f.RDB, f.Prefix, "clo", res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.Time("queued_ms"); !got.Equal(at) {
		t.Errorf("queued_ms %v, want the publisher's clock %v", got, at)
	}
}

// TestTracedFlag: at most TraceRate notifications a second are traced, and
// the envelope that goes on (to Kafka here, to the edges alike) says which,
// so that the edges and the FCM worker add to those trails only. With a
// rate of 1 and a clock that stands still, the first notification is
// traced and the second is not.
func TestTracedFlag(t *testing.T) {
	t.Parallel()
	at := time.UnixMilli(1_700_000_000_123)
	q := &recordingQueue{}
	f := newPublisherWith(t, delivery.PublisherConfig{Offline: q, TraceRate: 1, Now: func() time.Time { return at }})
	ctx := context.Background()
	var ids []string
	for range 2 {
		res, err := f.Pub.Publish(ctx, envelope("trf", "x"), "")
		if err != nil || !res.Queued {
			t.Fatalf("publish to an offline user: %+v, %v; want it queued", res, err)
		}
		ids = append(ids, res.ID)
	}
	q.mu.Lock()
	envs := slices.Clone(q.envs)
	q.mu.Unlock()
	if len(envs) != 2 || !envs[0].GetTraced() || envs[1].GetTraced() {
		t.Fatalf("queued %d envelopes, traced %v; want 2, the first traced and the second not",
			len(envs), []bool{len(envs) > 0 && envs[0].GetTraced(), len(envs) > 1 && envs[1].GetTraced()})
	}
	if _, err := trail.Find(ctx, f.RDB, f.Prefix, "trf", ids[0]); err != nil {
		t.Errorf("the traced notification's trail: %v", err)
	}
	if _, err := trail.Find(ctx, f.RDB, f.Prefix, "trf", ids[1]); !errors.Is(err, trail.ErrNotKept) {
		t.Errorf("the untraced notification's trail: %v, want trail.ErrNotKept", err)
	}
}

// TestRefusedRecordWithoutOffline: a publisher without the offline path,
// on the Redis where another one's queue refused a keyed notification,
// answers the retry as a duplicate of what the notify script did, not
// with an error for the record it does not requeue.
func TestRefusedRecordWithoutOffline(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	withQueue := testenv.PublisherOn(t, rdb, prefix, delivery.PublisherConfig{Offline: &recordingQueue{fail: map[string]bool{"ann": true}}})
	without := testenv.PublisherOn(t, rdb, prefix, delivery.PublisherConfig{})
	ctx := context.Background()
	first := envelope("ann", "x")
	if _, err := withQueue.Pub.Publish(ctx, first, "k1"); err == nil {
		t.Fatal("the failing queue's publish succeeded")
	}
	res, err := without.Pub.Publish(ctx, envelope("ann", "x"), "k1")
	if err != nil || !res.Duplicate || res.ID != first.Id || res.Queued {
		t.Fatalf("retry without the offline path: %+v, %v; want a duplicate of %s, not queued", res, err, first.Id)
	}
}
