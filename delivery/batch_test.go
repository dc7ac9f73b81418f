package delivery_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// recordingQueue is an offline queue that keeps what it takes, and fails
// the users in fail.
type recordingQueue struct {
	mu   sync.Mutex
	envs []*heraldv1.Envelope
	fail map[string]bool
}

func (q *recordingQueue) Enqueue(_ context.Context, env *heraldv1.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fail[env.GetUserId()] {
		return errors.New("queue down for " + env.GetUserId())
	}
	q.envs = append(q.envs, env)
	return nil
}

func (q *recordingQueue) ids() map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]int{}
	for _, e := range q.envs {
		out[e.GetId()]++
	}
	return out
}

// receiveIDs reads n events from ps and returns their notification ids.
func receiveIDs(tb testing.TB, ps *redis.PubSub, n int) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ids []string
	for range n {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			tb.Fatalf("after %d of %d events: %v", len(ids), n, err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, env.GetId())
	}
	return ids
}

// TestPublishBatch: each notification of a batch is routed as Publish
// routes it (online, offline and queued, the queue's failure, no receipts)
// with its own result, and idempotency keys hold within and across
// batches.
func TestPublishBatch(t *testing.T) {
	t.Parallel()
	q := &recordingQueue{fail: map[string]bool{"broken": true}}
	f := newOfflinePublisher(t, q)
	ctx := context.Background()
	ps := f.Subscribe(t, "ann")
	f.Lease(t, "ann")

	// A key already used by a Publish.
	earlier, err := f.Pub.Publish(ctx, envelope("ann", "earlier"), "seen")
	if err != nil {
		t.Fatal(err)
	}
	ackOrPush := envelope("ann", "needs receipts")
	ackOrPush.AckBy = timestamppb.New(time.Now().Add(time.Second))
	ns := []delivery.Notification{
		{Env: envelope("ann", "0")},                         // online
		{Env: envelope("bob", "1"), IdempotencyKey: "k1"},   // offline, queued
		{Env: envelope("ann", "2"), IdempotencyKey: "k2"},   // online
		{Env: envelope("ann", "3"), IdempotencyKey: "k2"},   // duplicate of 2, within the batch
		{Env: envelope("bob", "4"), IdempotencyKey: "k1"},   // duplicate of 1, within the batch
		{Env: envelope("ann", "5"), IdempotencyKey: "seen"}, // duplicate of the earlier Publish
		{Env: ackOrPush}, // no receipts on this publisher
		{Env: envelope("broken", "7"), IdempotencyKey: "k7"}, // the queue fails
		{Env: envelope("carl", "8"), IdempotencyKey: "k2"},   // same key, another user
	}
	res, errs := f.Pub.PublishBatch(ctx, ns)
	if len(res) != len(ns) || len(errs) != len(ns) {
		t.Fatalf("%d results and %d errors for %d notifications", len(res), len(errs), len(ns))
	}
	for i, want := range []struct {
		route     delivery.Route
		queued    bool
		duplicate bool
		id        string
	}{
		0: {delivery.RouteOnline, false, false, ns[0].Env.Id},
		1: {delivery.RouteOffline, true, false, ns[1].Env.Id},
		2: {delivery.RouteOnline, false, false, ns[2].Env.Id},
		3: {delivery.RouteOnline, false, true, ns[2].Env.Id},
		4: {delivery.RouteOffline, true, true, ns[1].Env.Id},
		5: {delivery.RouteOnline, false, true, earlier.ID},
		8: {delivery.RouteOffline, true, false, ns[8].Env.Id},
	} {
		if want.id == "" {
			continue
		}
		r := res[i]
		if errs[i] != nil || r.Route != want.route || r.Queued != want.queued || r.Duplicate != want.duplicate || r.ID != want.id || r.EventID == "" {
			t.Errorf("notification %d: %+v, %v; want route %s, queued %v, duplicate %v, id %s",
				i, r, errs[i], want.route, want.queued, want.duplicate, want.id)
		}
	}
	if res[3].EventID != res[2].EventID || res[4].EventID != res[1].EventID {
		t.Errorf("duplicates within the batch have event ids %s and %s, want their firsts' %s and %s",
			res[3].EventID, res[4].EventID, res[2].EventID, res[1].EventID)
	}
	if !errors.Is(errs[6], delivery.ErrNoReceipts) {
		t.Errorf("ack-or-push without receipts: %v, want ErrNoReceipts", errs[6])
	}
	var offline *delivery.OfflineError
	if !errors.As(errs[7], &offline) {
		t.Errorf("queue failure: %v, want an *OfflineError", errs[7])
	}

	// Exactly 0 and 2 reached ann's channel, in order, then the marker.
	marker := envelope("ann", "marker")
	if _, err := f.Pub.Publish(ctx, marker, ""); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(receiveIDs(t, ps, 4))
	if want := fmt.Sprint([]string{earlier.ID, ns[0].Env.Id, ns[2].Env.Id, marker.Id}); got != want {
		t.Fatalf("ann's channel carried %s, want %s", got, want)
	}
	// Exactly 1 and 8 were queued, once each.
	if ids := q.ids(); len(ids) != 2 || ids[ns[1].Env.Id] != 1 || ids[ns[8].Env.Id] != 1 {
		t.Fatalf("queued %v, want %s and %s once each", ids, ns[1].Env.Id, ns[8].Env.Id)
	}

	// The keys are remembered: a Publish retrying any of them is a
	// duplicate, and the failed one's retry queues it, as first recorded.
	for _, i := range []int{1, 2} {
		again, err := f.Pub.Publish(ctx, envelope(ns[i].Env.UserId, "retry"), ns[i].IdempotencyKey)
		if err != nil || !again.Duplicate || again.ID != ns[i].Env.Id || again.Queued != res[i].Queued {
			t.Errorf("retry of %d: %+v, %v; want the batch's result as a duplicate", i, again, err)
		}
	}
	q.mu.Lock()
	q.fail = nil
	q.mu.Unlock()
	retry := envelope("broken", "7 again")
	r, err := f.Pub.Publish(ctx, retry, "k7")
	if err != nil || r.Duplicate || !r.Queued || r.ID != ns[7].Env.Id {
		t.Errorf("retry of the failed one: %+v, %v; want it queued under the failed one's id %s", r, err, ns[7].Env.Id)
	}
	if ids := q.ids(); len(ids) != 3 || ids[ns[7].Env.Id] != 1 {
		t.Errorf("queued %v, want 1, 8 and the failed one, %s, once each", ids, ns[7].Env.Id)
	}
}

// TestPublishBatchReloadsScripts: on a Redis that lost its scripts (a
// restart, SCRIPT FLUSH), a batch loads the script and every notification
// is routed once.

func TestPublishBatchReloadsScripts(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	reg, pub := testenv.Publisher(t, rdb, "p:", 5*time.Second)
	ctx := context.Background()
	ps := testenv.Online(t, rdb, reg, "ann")
	for round := range 2 {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		var ns []delivery.Notification
		for i := range 5 {
			ns = append(ns, delivery.Notification{Env: envelope("ann", strconv.Itoa(i))})
		}
		res, errs := pub.PublishBatch(ctx, ns)
		var want []string
		for i := range ns {
			if errs[i] != nil || res[i].Route != delivery.RouteOnline || res[i].ID != ns[i].Env.Id {
				t.Fatalf("round %d, notification %d: %+v, %v", round, i, res[i], errs[i])
			}
			want = append(want, ns[i].Env.Id)
		}
		if got := receiveIDs(t, ps, len(ns)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d: channel carried %v, want %v", round, got, want)
		}
	}
	n, err := rdb.XLen(ctx, delivery.HistoryKeys("p:", delivery.UserStream("ann"))[0]).Result()
	if err != nil || n != 10 {
		t.Fatalf("history holds %d events (%v), want the 10 published once each", n, err)
	}
}

// pipelineCounter counts the pipelines a client sends, and their commands.
type pipelineCounter struct {
	pipelines, cmds atomic.Int64
}

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.pipelines.Add(1)
		c.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.pipelines.Add(1)
		c.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestPublishAutoPipelined: concurrent Publish calls share pipelines, and
// each gets its own result: its own id and route, its own idempotency
// record, its event on its own user's channel.
func TestPublishAutoPipelined(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	counter := &pipelineCounter{}
	rdb.AddHook(counter)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	q := &recordingQueue{}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{Offline: q, TraceTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{RDB: rdb, Reg: reg, Pub: pub, Prefix: prefix}
	ctx := context.Background()
	const users, calls = 8, 400
	subs := make([]*redis.PubSub, users)
	for u := range users {
		subs[u] = f.Subscribe(t, "u"+strconv.Itoa(u))
		if u%2 == 0 { // odd users are offline
			f.Lease(t, "u"+strconv.Itoa(u))
		}
	}
	counter.pipelines.Store(0)
	counter.cmds.Store(0)

	envs := make([]*heraldv1.Envelope, calls)
	res := make([]delivery.Result, calls)
	errs := make([]error, calls)
	start := make(chan struct{})
	// Every 10th caller has gone already: its call fails alone, and
	// publishes nothing.
	gone, cancel := context.WithCancel(ctx)
	cancel()
	var wg sync.WaitGroup
	for i := range calls {
		envs[i] = envelope("u"+strconv.Itoa(i%users), strconv.Itoa(i))
		callCtx := ctx
		if i%10 == 9 {
			callCtx = gone
		}
		wg.Go(func() {
			<-start
			res[i], errs[i] = pub.Publish(callCtx, envs[i], "key-"+strconv.Itoa(i))
		})
	}
	close(start)
	wg.Wait()

	perUser := make([][]string, users)
	eventIDs := map[string]bool{}
	queued := 0
	for i := range calls {
		online := i%users%2 == 0
		r := res[i]
		if i%10 == 9 {
			if !errors.Is(errs[i], context.Canceled) {
				t.Fatalf("call %d, its caller gone: %+v, %v; want context.Canceled", i, r, errs[i])
			}
			continue
		}
		if !online {
			queued++
		}
		if errs[i] != nil || r.ID != envs[i].Id || r.Duplicate || (r.Route == delivery.RouteOnline) != online || r.Queued == online {
			t.Fatalf("call %d: %+v, %v; want its own id %s, online %v", i, r, errs[i], envs[i].Id, online)
		}
		if pos := envs[i].UserId + "/" + r.EventID; eventIDs[pos] {
			t.Fatalf("call %d: event id %s given twice in %s's stream", i, r.EventID, envs[i].UserId)
		} else {
			eventIDs[pos] = true
		}
		if online {
			perUser[i%users] = append(perUser[i%users], r.ID)
		}
	}
	if p, c := counter.pipelines.Load(), counter.cmds.Load(); p >= c {
		t.Errorf("%d concurrent calls went in %d round trips of %d commands: never pipelined", calls, p, c)
	}
	// Each online user's channel carried its own calls' events, each once.
	for u := 0; u < users; u += 2 {
		got := map[string]bool{}
		for _, id := range receiveIDs(t, subs[u], len(perUser[u])) {
			if got[id] {
				t.Fatalf("user u%d got %s twice", u, id)
			}
			got[id] = true
		}
		for _, id := range perUser[u] {
			if !got[id] {
				t.Fatalf("user u%d did not get %s", u, id)
			}
		}
		// Nothing else was published before a marker.
		marker := envelope("u"+strconv.Itoa(u), "marker")
		if _, err := pub.Publish(ctx, marker, ""); err != nil {
			t.Fatal(err)
		}
		if next := receiveIDs(t, subs[u], 1); next[0] != marker.Id {
			t.Fatalf("user u%d got %s after its calls' events, want the marker %s", u, next[0], marker.Id)
		}
	}
	if n := len(q.ids()); n != queued {
		t.Fatalf("queued %d, want the %d offline calls", n, queued)
	}
	// Each call's idempotency record is its own.
	for _, i := range []int{0, 1, calls - 2} {
		again, err := pub.Publish(ctx, envelope(envs[i].UserId, "retry"), "key-"+strconv.Itoa(i))
		if err != nil || !again.Duplicate || again.ID != envs[i].Id || again.EventID != res[i].EventID {
			t.Fatalf("retry of call %d: %+v, %v; want its result %+v", i, again, err, res[i])
		}
	}
}

// TestPublishBatchCluster: on a Redis Cluster, a batch's pipeline is split
// per node, and every user, whatever its slot, gets its notification over
// sharded pub/sub.
func TestPublishBatchCluster(t *testing.T) {
	t.Parallel()
	c := testenv.StartCluster(t, 3, 0)
	rdb := c.Client()
	reg, pub := testenv.Publisher(t, rdb, "c:", 5*time.Second)
	ctx := context.Background()
	const users = 12
	var ns []delivery.Notification
	subs := make([]*redis.PubSub, users)
	for u := range users {
		user := "user-" + strconv.Itoa(u)
		subs[u] = rdb.SSubscribe(ctx, delivery.Channel("c:", delivery.UserStream(user)))
		if _, err := subs[u].Receive(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { subs[u].Close() })
		if err := reg.Lease(ctx, presence.Conn{User: user, ID: "c1", Edge: "e1", Since: time.Now()}); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, delivery.Notification{Env: envelope(user, "x"), IdempotencyKey: "k"})
	}
	res, errs := pub.PublishBatch(ctx, ns)
	for u := range users {
		if errs[u] != nil || res[u].Route != delivery.RouteOnline || res[u].ID != ns[u].Env.Id {
			t.Fatalf("user %d: %+v, %v; want online", u, res[u], errs[u])
		}
		if got := receiveIDs(t, subs[u], 1); got[0] != ns[u].Env.Id {
			t.Fatalf("user %d got %s, want %s", u, got[0], ns[u].Env.Id)
		}
	}
}

// TestPublishBatchOneFails: on a single Redis a batch is one script; a
// notification that fails in it (its history key holds the wrong type)
// fails alone, and the others are recorded and published.
func TestPublishBatchOneFails(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	ctx := context.Background()
	ps := testenv.Online(t, rdb, reg, "ann")
	bad := delivery.HistoryKeys(prefix, delivery.UserStream("bob"))[0]
	if err := rdb.Set(ctx, bad, "not a stream", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	ns := []delivery.Notification{{Env: envelope("ann", "0")}, {Env: envelope("bob", "1")}, {Env: envelope("ann", "2")}}
	res, errs := pub.PublishBatch(ctx, ns)
	if errs[1] == nil {
		t.Fatalf("bob's notification, whose history is not a stream: %+v, want an error", res[1])
	}
	for _, i := range []int{0, 2} {
		if errs[i] != nil || res[i].Route != delivery.RouteOnline {
			t.Fatalf("ann's notification %d: %+v, %v; want it published", i, res[i], errs[i])
		}
	}
	if got := receiveIDs(t, ps, 2); fmt.Sprint(got) != fmt.Sprint([]string{ns[0].Env.Id, ns[2].Env.Id}) {
		t.Fatalf("channel carried %v, want ann's two", got)
	}
}
