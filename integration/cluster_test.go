package integration_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// These tests run Herald on a Redis Cluster of their own: redis-server
// processes joined with redis-cli --cluster create.

// owners maps each user to the address of the primary that owns its slot.
func owners(t *testing.T, s *system, users []string) map[string]string {
	t.Helper()
	out := make(map[string]string, len(users))
	for _, u := range users {
		node, err := s.opts.cluster.Client().MasterForKey(context.Background(), s.reg.Key(u))
		if err != nil {
			t.Fatal(err)
		}
		out[u] = node.Options().Addr
	}
	return out
}

// TestClusterSpread: with 3 edges and 2 routers on a 3-primary cluster,
// users spread over every primary get every notification, in order, on
// every connection, and a topic's broadcast reaches every subscriber.
func TestClusterSpread(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	s := newSystemWith(t, options{cluster: c, edges: 3, routers: 2})
	const users, rounds = 45, 3
	var names []string
	for i := range users {
		names = append(names, "spread-"+strconv.Itoa(i))
	}
	perPrimary := map[string]int{}
	for _, addr := range owners(t, s, names) {
		perPrimary[addr]++
	}
	if len(perPrimary) != 3 {
		t.Fatalf("users cover %d primaries, want 3: %v", len(perPrimary), perPrimary)
	}
	// Each user has two connections, on two different edges, both also
	// subscribed to a topic.
	conns := make(map[string][]*sseClient)
	for i, u := range names {
		for _, e := range []*testEdge{s.edges[i%3], s.edges[(i+1)%3]} {
			tok, err := sseedge.IssueToken(testSecret, u, time.Hour, time.Now(), "market.*")
			if err != nil {
				t.Fatal(err)
			}
			conns[u] = append(conns[u], connectFrom(t, e.url+"/v1/events?topic=market.open&access_token="+tok, ""))
		}
	}
	for r := range rounds {
		for i, u := range names {
			router := s.routers[(i+r)%len(s.routers)]
			resp, err := router.Notify(context.Background(), &heraldv1.NotifyRequest{UserId: u, Data: []byte(u + "#" + strconv.Itoa(r))})
			if err != nil {
				t.Fatalf("Notify %s: %v", u, err)
			}
			if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE || resp.GetSubscribers() != 2 {
				t.Fatalf("Notify %s: route %v to %d edge subscribers, want online to 2", u, resp.GetRoute(), resp.GetSubscribers())
			}
		}
	}
	// An idempotency key holds across routers: the retry through the other
	// router is a duplicate, and publishes nothing.
	u := names[0]
	first, err := s.routers[0].Notify(context.Background(), &heraldv1.NotifyRequest{UserId: u, Data: []byte("once"), IdempotencyKey: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.routers[1].Notify(context.Background(), &heraldv1.NotifyRequest{UserId: u, Data: []byte("once"), IdempotencyKey: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetDuplicate() || again.GetNotificationId() != first.GetNotificationId() {
		t.Errorf("retry through the other router: duplicate=%v id %s, want a duplicate of %s",
			again.GetDuplicate(), again.GetNotificationId(), first.GetNotificationId())
	}
	b, err := s.routers[1].Broadcast(context.Background(), &heraldv1.BroadcastRequest{Topic: "market.open", Data: []byte("bell")})
	if err != nil {
		t.Fatal(err)
	}
	extra := map[string][]string{u: {"once"}}
	if b.GetSubscribers() != 3 {
		t.Errorf("broadcast reached %d edges, want 3", b.GetSubscribers())
	}
	// The user's events come in order; the broadcast, on a topic whose
	// slot another primary may own, through another of the edge's
	// connections, may come before the last of them.
	for _, u := range names {
		for k, c := range conns[u] {
			var got, topic []string
			for range rounds + 1 + len(extra[u]) {
				if ev := c.next(t, 5*time.Second); ev.Data == "bell" {
					topic = append(topic, ev.Data)
				} else {
					got = append(got, ev.Data)
				}
			}
			want := append([]string{u + "#0", u + "#1", u + "#2"}, extra[u]...)
			if !slices.Equal(got, want) || len(topic) != 1 {
				t.Errorf("%s connection %d got %q and %q, want %q and the bell once", u, k, got, topic, want)
			}
		}
	}
}

// TestClusterShardedPubSub: a notification is published only on the shard
// that owns its user's slot, with SPUBLISH, never with PUBLISH (which a
// cluster relays to every node); and the edge holds one sharded
// subscription connection per primary, each with only that primary's
// channels.
func TestClusterShardedPubSub(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	s := newSystemWith(t, options{cluster: c, edges: 1})
	var names []string
	for i := range 30 {
		u := "shard-" + strconv.Itoa(i)
		names = append(names, u)
		connect(t, s.edges[0].url, token(t, u))
	}
	owner := owners(t, s, names)
	want := map[string]int64{}
	for _, addr := range owner {
		want[addr]++
	}
	if len(want) != 3 {
		t.Fatalf("users cover %d primaries, want 3", len(want))
	}
	for addr, n := range want {
		subs := c.ShardSubscribers(addr)
		if len(subs) != 1 || int64(subs[0]) != n {
			t.Errorf("primary %s: shard subscriptions per client %v, want one client with %d", addr, subs, n)
		}
	}
	before := map[string]testenv.PubSubStats{}
	for _, n := range c.Nodes {
		before[n.Addr] = c.Stats(n.Addr)
	}
	for _, u := range names {
		s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("x")})
	}
	for _, n := range c.Nodes {
		st, was := c.Stats(n.Addr), before[n.Addr]
		line := fmt.Sprintf("node %s: SPUBLISH %d, PUBLISH %d, bus publish sent %d, bus shard publish sent %d",
			n.Addr, st.SPublish-was.SPublish, st.Publish-was.Publish,
			st.BusPublishSent-was.BusPublishSent, st.BusShardPubSent-was.BusShardPubSent)
		t.Log(line)
		if st.SPublish-was.SPublish != want[n.Addr] {
			t.Errorf("%s: want %d SPUBLISH, one per user whose slot it owns", line, want[n.Addr])
		}
		if st.Publish != was.Publish || st.BusPublishSent != was.BusPublishSent {
			t.Errorf("%s: classic PUBLISH was used, which a cluster sends to every node", line)
		}
	}
}

// TestClusterFailover: a primary fails over while notifications flow
// through two routers to users on two edges, either on command (CLUSTER
// FAILOVER, as for maintenance) or because it died (SIGKILL, and its
// replica takes over after the node timeout). The edges resubscribe on the
// new primary, clients recover any gap through history, and the accounting
// harness finds nothing lost.
func TestClusterFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fail   func(c *testenv.Cluster, victim string) (string, error)
		revive bool // start the victim again at the end
	}{
		{"CLUSTER FAILOVER", func(c *testenv.Cluster, victim string) (string, error) { return c.Failover(victim) }, false},
		{"primary killed", func(c *testenv.Cluster, victim string) (string, error) { return c.Kill(victim) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testenv.StartCluster(t, 3, 1)
			o := testenv.StartOfflineOn(t, 2, c.Client(), testenv.Prefix(t))
			s, h := setup(t, o, options{cluster: c, edges: 2, routers: 2}, 40, 20)
			o.StartWorker(t, o.WorkerConfig(), nil)
			h.connectOnline(s.edges[0].url, s.edges[1].url)
			victim := c.Primaries()[0]
			var (
				wg         sync.WaitGroup
				newPrimary string
				failErr    error
			)
			h.drive(faultLoad, func() {
				wg.Go(func() { newPrimary, failErr = tc.fail(c, victim) })
			})
			wg.Wait()
			if failErr != nil {
				t.Fatal(failErr)
			}
			t.Logf("primary %s: %s; %s took over", victim, tc.name, newPrimary)
			// While the shard's subscriptions move to the new primary, a
			// publish there reaches no edge: the router pushes it
			// (stale_presence), and the edge, once subscribed again, also
			// catches it up from history. Both, not neither
			// (docs/reliability.md).
			h.allow.sseAndPush = true
			h.report("redis cluster: "+tc.name, h.settle())
			// The edges follow: the new primary holds shard subscriptions.
			testenv.WaitFor(t, auditWait, "an edge to subscribe on the new primary", func() bool {
				return len(c.ShardSubscribers(newPrimary)) > 0
			})
			if tc.revive {
				c.Revive(victim)
			}
		})
	}
}

// TestClusterShardLost: when a primary without a replica dies, the streams
// of the users on its slots are closed as broker_lost once the grace period
// has passed, so that their clients reconnect; the streams of users on the
// other shards go on, and their notifications still arrive.
func TestClusterShardLost(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0, "--cluster-require-full-coverage", "no")
	s := newSystemWith(t, options{cluster: c, edges: 1, edge: sseedge.Config{BrokerGrace: time.Second}})
	var names []string
	for i := range 12 {
		names = append(names, "lost-"+strconv.Itoa(i))
	}
	owner := owners(t, s, names)
	victim := owner[names[0]]
	clients := map[string]*sseClient{}
	for _, u := range names {
		clients[u] = connect(t, s.edges[0].url, token(t, u))
	}
	// One working connection per primary that owns a user, and no orphan.
	shards := map[string]int{}
	for _, u := range names {
		shards[owner[u]]++
	}
	edge := s.edges[0]
	if l, o := edge.gauge("herald_sse_redis_links"), edge.gauge("herald_sse_redis_orphaned_channels"); l != float64(len(shards)) || o != 0 {
		t.Errorf("before the loss: links %v, orphaned channels %v; want %d, 0", l, o, len(shards))
	}
	c.Node(victim).Stop()
	// Within the grace, the dead shard's channels are orphans; then their
	// streams are closed and the orphans go with them.
	testenv.WaitFor(t, 15*time.Second, "the dead shard's channels to be orphaned", func() bool {
		return edge.gauge("herald_sse_redis_orphaned_channels") == float64(shards[victim])
	})
	var lost, kept int
	for _, u := range names {
		if owner[u] == victim {
			lost++
			select {
			case <-clients[u].closed:
			case <-time.After(15 * time.Second):
				t.Errorf("%s's stream on the dead shard was not closed", u)
			}
			continue
		}
		kept++
	}
	if lost == 0 || kept == 0 {
		t.Fatalf("%d users on the dead shard and %d elsewhere; want some of each", lost, kept)
	}
	if got := s.edges[0].closed(sseedge.CloseBrokerLost); got != float64(lost) {
		t.Errorf("closed as broker_lost: %v, want %d", got, lost)
	}
	testenv.WaitFor(t, 5*time.Second, "the orphans to go with their streams", func() bool {
		return edge.gauge("herald_sse_redis_orphaned_channels") == 0
	})
	if l := edge.gauge("herald_sse_redis_links"); l != float64(len(shards)-1) {
		t.Errorf("after the loss: links %v, want %d", l, len(shards)-1)
	}
	for _, u := range names {
		if owner[u] == victim {
			continue
		}
		s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("still here")})
		if got := clients[u].next(t, 5*time.Second).Data; got != "still here" {
			t.Errorf("%s on a live shard got %q", u, got)
		}
	}
	// The shard comes back, and its users can connect again.
	c.Node(victim).Start()
	c.WaitHealthy(3, 0)
	connect(t, s.edges[0].url, token(t, names[0]))
}

// TestClusterSlotMove: when the slot of a connected user moves to another
// primary (resharding), the router follows the redirect and the edge
// resubscribes the user's channel on the new owner: events sent after the
// move still arrive, in order.
func TestClusterSlotMove(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	s := newSystemWith(t, options{cluster: c, edges: 1})
	const u = "mover"
	client := connect(t, s.edges[0].url, token(t, u))
	s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("before")})
	if got := client.next(t, 5*time.Second).Data; got != "before" {
		t.Fatalf("got %q before the move", got)
	}
	from := owners(t, s, []string{u})[u]
	var to string
	for _, p := range c.Primaries() {
		if p != from {
			to = p
			break
		}
	}
	slot := c.KeySlot(s.reg.Key(u))
	if err := c.MoveSlot(slot, to); err != nil {
		t.Fatal(err)
	}
	t.Logf("moved slot %d of %s from %s to %s", slot, u, from, to)
	testenv.WaitFor(t, auditWait, "the edge to subscribe the user's channel on the new owner", func() bool {
		return len(c.ShardSubscribers(to)) > 0
	})
	for i := range 3 {
		resp := s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("after-" + strconv.Itoa(i))})
		if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
			t.Errorf("after the move: route %v, want online", resp.GetRoute())
		}
	}
	for i := range 3 {
		if got, want := client.next(t, 5*time.Second).Data, "after-"+strconv.Itoa(i); got != want {
			t.Errorf("after the move: got %q, want %q", got, want)
		}
	}
	if subs := c.ShardSubscribers(from); len(subs) != 0 {
		t.Errorf("the old owner %s still has shard subscribers %v", from, subs)
	}
}

// auditWait bounds how long an edge takes to notice a slot that moved
// without a word from its old owner: its slot-map audit period and a bit.
const auditWait = 20 * time.Second

// TestClusterTwoWorkers: two workers share a six-partition offline topic.
// One joins mid-stream and the other leaves; each rebalance loses nothing,
// and each user's pushes arrive in order.
func TestClusterTwoWorkers(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	o := testenv.StartOfflineOn(t, 6, c.Client(), testenv.Prefix(t))
	const users, total = 24, 480
	for i := range users {
		u := "w-" + strconv.Itoa(i)
		o.Register(t, u, "tok-"+u)
	}
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	stopA := o.StartWorker(t, o.WorkerConfig(), regA)
	var stopB func()
	sent := map[string]string{} // notification id → user
	for i := range total {
		switch i {
		case total / 3:
			stopB = o.StartWorker(t, o.WorkerConfig(), regB)
		case 2 * total / 3:
			stopA()
		}
		u := "w-" + strconv.Itoa(i%users)
		env := o.Notify(t, u, strconv.Itoa(i), nil)
		sent[env.GetId()] = u
		time.Sleep(2 * time.Millisecond)
	}
	defer stopB()
	testenv.WaitFor(t, 60*time.Second, "every notification pushed", func() bool {
		seen := map[string]bool{}
		for _, m := range o.Emulator.Messages() {
			seen[m.Data[fcm.DataID]] = true
		}
		return len(seen) >= total
	})
	// Nothing lost; repeats are allowed (at least once).
	pushes := map[string]int{}
	for _, m := range o.Emulator.Messages() {
		id := m.Data[fcm.DataID]
		if _, ok := sent[id]; !ok {
			t.Fatalf("pushed an id never sent: %s", id)
		}
		pushes[id]++
	}
	dups := 0
	for _, n := range pushes {
		dups += n - 1
	}
	// Each user's notifications sit in one partition, in the order sent,
	// which is the order a worker reads them in. (A worker's batch goes out
	// through concurrent sends, so the order in which FCM receives them is
	// not kept, as FCM does not keep it either.)
	partition := map[string]int{}
	last := map[string]int{}
	for _, m := range o.Kafka.ReadAll(queue.DefaultOfflineTopic) {
		u := string(m.Key)
		env := testenv.Decode[heraldv1.Envelope](t, []kafka.Message{m})[0]
		n, _ := strconv.Atoi(string(env.GetData()))
		if p, ok := partition[u]; ok && p != m.Partition {
			t.Errorf("%s's notifications are in partitions %d and %d", u, p, m.Partition)
		}
		if prev, ok := last[u]; ok && n < prev {
			t.Errorf("%s: notification %d is after %d in partition %d", u, n, prev, m.Partition)
		}
		partition[u], last[u] = m.Partition, n
	}
	used := map[int]bool{}
	for _, p := range partition {
		used[p] = true
	}
	if len(partition) != users || len(used) < 2 {
		t.Errorf("%d users' notifications over %d partitions; want %d users over several", len(partition), len(used), users)
	}
	pushedA, pushedB := pushed(t, regA), pushed(t, regB)
	t.Logf("two workers: %d sent, %d pushed (%d repeats) from %d partitions; worker A sent %v, worker B %v",
		total, len(pushes), dups, len(used), pushedA, pushedB)
	if pushedA == 0 || pushedB == 0 {
		t.Errorf("both workers should have pushed: A %v, B %v", pushedA, pushedB)
	}
}

// pushed is a worker's herald_fcm_messages_total, summed over its labels.
func pushed(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "herald_fcm_messages_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
