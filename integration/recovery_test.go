package integration_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

func eventsURL(e *testEdge, tok string) string { return e.url + "/v1/events?access_token=" + tok }

// expectData reads events from c until it has len(want) of them, and checks
// their data in order.
func expectData(t *testing.T, c *sseClient, want []string) sseedge.Event {
	t.Helper()
	var last sseedge.Event
	for i, w := range want {
		last = c.next(t, waitEvent)
		if last.Data != w {
			t.Fatalf("event %d: data %q (event %q, id %s), want %q", i, last.Data, last.Event, last.ID, w)
		}
	}
	return last
}

func (s *system) waitOffline(t *testing.T, user string) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, user+" to be offline", func() bool {
		n, err := s.reg.Online(context.Background(), user)
		return err == nil && n[user] == 0
	})
}

// A client that disconnects, misses N events and reconnects with
// Last-Event-ID gets exactly those N, then the live ones, including events
// published while the replay runs.
func TestRecoveryNoGapsNoDuplicates(t *testing.T) {
	s := newSystem(t, 2, 5*time.Second)
	tok := token(t, "rita")
	send := func(data string) {
		s.notify(t, &heraldv1.NotifyRequest{UserId: "rita", Event: "update", Data: []byte(data)})
	}
	c := connect(t, s.edges[0].url, tok)
	send("0")
	send("1")
	last := expectData(t, c, []string{"0", "1"})
	c.close()
	s.waitOffline(t, "rita")

	var want []string
	for i := 2; i < 12; i++ { // missed while away
		send(strconv.Itoa(i))
		want = append(want, strconv.Itoa(i))
	}
	// Publish more while the client reconnects and replays.
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 12; i < 40; i++ {
			send(strconv.Itoa(i))
		}
	})
	for i := 12; i < 40; i++ {
		want = append(want, strconv.Itoa(i))
	}
	c = connectFrom(t, eventsURL(s.edges[1], tok), last.ID)
	wg.Wait()
	expectData(t, c, want)
	// Nothing duplicated after them.
	send("end")
	expectData(t, c, []string{"end"})

	// The query parameter works for clients that cannot set the header.
	c.close()
	s.waitOffline(t, "rita")
	send("away")
	c = connectFrom(t, eventsURL(s.edges[0], tok)+"&last_event_id="+c.lastID(), "")
	expectData(t, c, []string{"away"})
}

// A gap older than history yields herald.reset instead of a silent hole.
func TestGapBeyondHistory(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, history: delivery.HistoryConfig{Length: 5}})
	tok := token(t, "gus")
	c := connect(t, s.edges[0].url, tok)
	s.notify(t, &heraldv1.NotifyRequest{UserId: "gus", Data: []byte("seen")})
	last := expectData(t, c, []string{"seen"})
	c.close()
	s.waitOffline(t, "gus")
	for i := range beyondHistory {
		s.notify(t, &heraldv1.NotifyRequest{UserId: "gus", Data: []byte(strconv.Itoa(i))})
	}
	c = connectFrom(t, eventsURL(s.edges[0], tok), last.ID)
	ev := c.next(t, waitEvent)
	if ev.Event != sseedge.ResetEvent {
		t.Fatalf("first event after the gap: %+v, want %s", ev, sseedge.ResetEvent)
	}
	// After the reset the stream goes on live, and its id resumes cleanly.
	s.notify(t, &heraldv1.NotifyRequest{UserId: "gus", Data: []byte("after")})
	after := expectData(t, c, []string{"after"})
	c.close()
	s.waitOffline(t, "gus")
	c = connectFrom(t, eventsURL(s.edges[0], tok), after.ID)
	s.notify(t, &heraldv1.NotifyRequest{UserId: "gus", Data: []byte("next")})
	if ev := c.next(t, waitEvent); ev.Data != "next" {
		t.Fatalf("after reconnecting at the head: %+v, want only the next event", ev)
	}
}

// Broadcast topics reach every subscriber on every edge, an edge subscribes
// to a topic once however many clients read it, tokens limit the topics, and
// topics recover through Last-Event-ID too.
func TestBroadcastTopics(t *testing.T) {
	s := newSystem(t, 2, 5*time.Second)
	tok, err := sseedge.IssueToken(testSecret, "tess", time.Hour, time.Now(), "chat.*")
	if err != nil {
		t.Fatal(err)
	}
	url := func(e *testEdge) string { return eventsURL(e, tok) + "&topic=chat.room1" }
	clients := []*sseClient{
		connectFrom(t, url(s.edges[0]), ""),
		connectFrom(t, url(s.edges[0]), ""),
		connectFrom(t, url(s.edges[0]), ""),
		connectFrom(t, url(s.edges[1]), ""),
	}
	resp, err := s.router.Broadcast(context.Background(), &heraldv1.BroadcastRequest{Topic: "chat.room1", Event: "chat", Data: []byte("hello all")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSubscribers() != 2 {
		t.Fatalf("broadcast reached %d edge subscribers, want 2 (one per edge)", resp.GetSubscribers())
	}
	var last sseedge.Event
	for _, c := range clients {
		last = c.next(t, waitEvent)
		if last.Event != "chat" || last.Data != "hello all" {
			t.Fatalf("client got %+v", last)
		}
	}

	// A user notification and a broadcast on one stream; then recovery of both.
	c := clients[3]
	c.close()
	for _, cl := range clients[:3] {
		cl.close()
	}
	s.waitOffline(t, "tess")
	if _, err := s.router.Broadcast(context.Background(), &heraldv1.BroadcastRequest{Topic: "chat.room1", Data: []byte("missed broadcast")}); err != nil {
		t.Fatal(err)
	}
	s.notify(t, &heraldv1.NotifyRequest{UserId: "tess", Data: []byte("missed notification")})
	c = connectFrom(t, url(s.edges[0]), last.ID)
	// Order holds within a stream; across streams it is by millisecond, so
	// two events of the same millisecond may come in either order.
	got := []string{c.next(t, waitEvent).Data, c.next(t, waitEvent).Data}
	slices.Sort(got)
	if got[0] != "missed broadcast" || got[1] != "missed notification" {
		t.Fatalf("recovered %q, want the missed broadcast and notification", got)
	}

	// A topic the token does not allow is refused.
	r, cancel := get(t, eventsURL(s.edges[0], tok)+"&topic=admin", nil)
	r.Body.Close()
	cancel()
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("forbidden topic: %s, want 403", r.Status)
	}
}

// On drain every client is closed as server_drain within the period, and
// each reconnects to the other edge and recovers what was published in
// between.
func TestDrainAndRecover(t *testing.T) {
	s := newSystemWith(t, options{edges: 2, edge: sseedge.Config{DrainPeriod: 300 * time.Millisecond}})
	users := []string{"u0", "u1", "u2", "u3", "u4"}
	last := map[string]string{}
	for _, u := range users {
		c := connect(t, s.edges[0].url, token(t, u))
		s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("before")})
		last[u] = expectData(t, c, []string{"before"}).ID
	}
	if err := s.edges[0].Stop(); err != nil {
		t.Fatal(err)
	}
	if got := s.edges[0].closed(sseedge.CloseServerDrain); got != float64(len(users)) {
		t.Fatalf("server_drain closes = %v, want %d", got, len(users))
	}
	for _, u := range users {
		s.notify(t, &heraldv1.NotifyRequest{UserId: u, Data: []byte("during")})
	}
	for _, u := range users {
		c := connectFrom(t, eventsURL(s.edges[1], token(t, u)), last[u])
		expectData(t, c, []string{"during"})
	}
}

// Restarting Redis under a live edge: the stream stays open, delivery
// resumes, and what was published while the edge was resubscribing is
// recovered from history. Redis runs with an append-only file, as a
// production Redis that keeps history should.
func TestRedisRestart(t *testing.T) {
	srv := testenv.StartRedisServer(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	s := newSystemWith(t, options{edges: 1, redis: rdb})
	c := connect(t, s.edges[0].url, token(t, "rex"))
	s.notify(t, &heraldv1.NotifyRequest{UserId: "rex", Data: []byte("before")})
	expectData(t, c, []string{"before"})

	runID := func() string {
		f, err := rdb.Info(context.Background(), "server").Result()
		if err != nil {
			t.Fatal(err)
		}
		_, id, _ := strings.Cut(f, "run_id:")
		id, _, _ = strings.Cut(id, "\r\n")
		return id
	}
	before := runID()
	srv.Restart()
	var want []string
	for i := range 5 {
		data := "after-" + strconv.Itoa(i)
		testenv.WaitFor(t, 10*time.Second, "Notify to succeed", func() bool {
			_, err := s.router.Notify(context.Background(), &heraldv1.NotifyRequest{UserId: "rex", Data: []byte(data), IdempotencyKey: data})
			return err == nil
		})
		want = append(want, data)
	}
	expectData(t, c, want)
	if got := s.edges[0].closed(sseedge.CloseBrokerLost); got != 0 {
		t.Fatalf("the client was dropped (broker_lost = %v)", got)
	}
	// The restart hit the stream: the new redis-server knows the edge's
	// subscription only because the edge subscribed again.
	after := runID()
	subs, err := rdb.PubSubNumSub(context.Background(), delivery.Channel(s.prefix, delivery.UserStream("rex"))).Result()
	if err != nil {
		t.Fatal(err)
	}
	if after == before || len(subs) != 1 {
		t.Fatalf("run_id %s → %s, subscriptions on the new server %v: want a new server with the edge subscribed again", before, after, subs)
	}
	for ch, n := range subs {
		if n != 1 {
			t.Fatalf("%s has %d subscribers on the new server, want the edge's 1", ch, n)
		}
	}
}
