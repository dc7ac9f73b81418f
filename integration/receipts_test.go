package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/trail"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// ackOrPush sends user an ack-or-push notification with deadline.
func (s *system) ackOrPush(tb testing.TB, user, data string, deadline time.Duration) *heraldv1.NotifyResponse {
	tb.Helper()
	resp := s.notify(tb, &heraldv1.NotifyRequest{UserId: user, Data: []byte(data),
		DeliveryMode: heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH, AckDeadline: durationpb.New(deadline)})
	if resp.GetDeliveryMode() != heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH {
		tb.Fatalf("response mode %v, want ACK_OR_PUSH", resp.GetDeliveryMode())
	}
	return resp
}

// ack posts SSE ids to the edge's /v1/ack with user's token.
func ack(tb testing.TB, e *testEdge, user string, ids ...string) (int, map[string]any) {
	tb.Helper()
	body, _ := json.Marshal(map[string]any{"ids": ids})
	req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/ack", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token(tb, user))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// waitSwept waits until every receipt deadline has been handled: the index
// is empty.
func (s *system) waitSwept(tb testing.TB) {
	tb.Helper()
	testenv.WaitFor(tb, 20*time.Second, "the sweepers to empty the deadline index", func() bool {
		keys, _ := s.rdb.Keys(context.Background(), s.prefix+"{r:*}:receipts:due").Result()
		for _, k := range keys {
			if s.rdb.ZCard(context.Background(), k).Val() > 0 {
				return false
			}
		}
		return true
	})
}

// offlineIDs counts the offline topic's records by notification id.
func offlineIDs(tb testing.TB, o *testenv.Offline) map[string]int {
	tb.Helper()
	ids := map[string]int{}
	for _, m := range o.Kafka.ReadAll(queue.DefaultOfflineTopic) {
		env, err := delivery.Unmarshal(m.Value)
		if err != nil {
			tb.Fatal(err)
		}
		ids[env.GetId()]++
	}
	return ids
}

func TestAckedInTimeIsNotPushed(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o})
	o.StartWorker(t, o.WorkerConfig(), nil)
	o.Register(t, "sam", "tok-sam")
	c := connect(t, s.edges[0].url, token(t, "sam"))

	resp := s.ackOrPush(t, "sam", "hello", 500*time.Millisecond)
	if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("route %v, want ROUTE_ONLINE", resp.GetRoute())
	}
	ev := c.next(t, 5*time.Second)
	code, out := ack(t, s.edges[0], "sam", ev.ID)
	if code != 200 || out["acked"] != 1.0 {
		t.Fatalf("ack: %d %v, want 200 and 1 acked", code, out)
	}
	s.waitSwept(t)
	if ids := offlineIDs(t, o); ids[resp.GetNotificationId()] != 0 {
		t.Fatalf("an acked notification was queued for a push: %v", ids)
	}
	if n := o.Emulator.Count(); n != 0 {
		t.Fatalf("emulator got %d pushes; want none", n)
	}
	tr, err := trail.Find(context.Background(), s.rdb, s.prefix, "sam", resp.GetNotificationId())
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "acked_ms in the trail", func() bool {
		tr, _ = trail.Find(context.Background(), s.rdb, s.prefix, "sam", resp.GetNotificationId())
		return !tr.Time("acked_ms").IsZero()
	})
	if !tr.Time("fell_back_ms").IsZero() {
		t.Fatalf("trail %v says it fell back", tr.Fields)
	}
}

// TestHalfOpenConnectionGetsPushedOnce: a client that stops reading (a
// frozen app: the edge still sees its connection open) gets the push after
// the deadline, exactly once; an ack after that is counted late.
func TestHalfOpenConnectionGetsPushedOnce(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o})
	o.StartWorker(t, o.WorkerConfig(), nil)
	o.Register(t, "tia", "tok-tia")
	// The frozen client: the stream is open, nothing reads it.
	resp, cancel := get(t, s.edges[0].url+"/v1/events?access_token="+token(t, "tia"), nil)
	defer cancel()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %s", resp.Status)
	}
	n := s.ackOrPush(t, "tia", "fill", 300*time.Millisecond)
	if n.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("route %v, want ROUTE_ONLINE (the connection is open)", n.GetRoute())
	}
	o.WaitPushes(t, 1)
	s.waitSwept(t)
	got := o.Emulator.ByToken("tok-tia")
	if len(got) != 1 || got[0].Data["herald_id"] != n.GetNotificationId() {
		t.Fatalf("pushes %v, want the notification once", got)
	}
	m, err := got[0].Decode()
	if err != nil {
		t.Fatal(err)
	}
	if m.Android.CollapseKey != n.GetNotificationId() {
		t.Fatalf("collapse key %q, want the notification id so the device folds the push with the SSE event", m.Android.CollapseKey)
	}
	if ids := offlineIDs(t, o); ids[n.GetNotificationId()] != 1 {
		t.Fatalf("queued %d times, want once", ids[n.GetNotificationId()])
	}
	// The client wakes up and acks: too late.
	sc := bufio.NewScanner(resp.Body)
	var id string
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			id = v
		}
		if sc.Text() == "data: fill" {
			break
		}
	}
	if code, out := ack(t, s.edges[0], "tia", id); code != 200 || out["late"] != 1.0 {
		all, _ := s.rdb.HGetAll(context.Background(), s.prefix+"{u:tia}:receipts").Result()
		t.Fatalf("late ack of %q: %d %v, want late 1; receipts %v", id, code, out, all)
	}
	testenv.WaitFor(t, 5*time.Second, "the fallback and the late ack in the trail", func() bool {
		tr, err := trail.Find(context.Background(), s.rdb, s.prefix, "tia", n.GetNotificationId())
		return err == nil && !tr.Time("fell_back_ms").IsZero() && !tr.Time("late_ack_ms").IsZero()
	})
}

func TestReconnectPastIDAcknowledges(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o})
	o.Register(t, "uma", "tok-uma")
	c := connect(t, s.edges[0].url, token(t, "uma"))
	n := s.ackOrPush(t, "uma", "1", time.Second)
	c.next(t, 5*time.Second)
	last := c.lastID()
	c.close()
	connectFrom(t, eventsURL(s.edges[0], token(t, "uma")), last)
	s.waitSwept(t)
	if ids := offlineIDs(t, o); ids[n.GetNotificationId()] != 0 {
		t.Fatalf("a notification acknowledged by reconnecting was queued for a push")
	}
}

// TestSeveralSweepersFallBackOnce: with two sweepers, each of 1,000
// unacknowledged notifications falls back exactly once.
func TestSeveralSweepersFallBackOnce(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s := newSystemWith(t, options{edges: 1, offline: o, sweepers: 2})
	const users, total = 10, 1000
	for u := range users {
		connect(t, s.edges[0].url, token(t, "v"+strconv.Itoa(u)))
	}
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, 16)
	for i := range total {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := s.router.Notify(context.Background(), &heraldv1.NotifyRequest{UserId: "v" + strconv.Itoa(i%users),
				Data: []byte(strconv.Itoa(i)), DeliveryMode: heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH,
				AckDeadline: durationpb.New(100 * time.Millisecond)})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids = append(ids, resp.GetNotificationId())
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.waitSwept(t)
	queued := offlineIDs(t, o)
	var twice, missing int
	for _, id := range ids {
		switch queued[id] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if len(ids) != total || missing != 0 || twice != 0 || len(queued) != total {
		t.Fatalf("%d notifications: %d not fallen back, %d fallen back more than once, %d records; receipts not fallen back: %v",
			len(ids), missing, twice, len(queued), s.receiptsOf(t, users, ids, queued))
	}
}

// receiptsOf returns the receipt, by notification id, of the ids that were
// not queued, with the users v0 to v<users-1>: one still pending once the
// deadline index is empty was left behind by the sweepers.
func (s *system) receiptsOf(tb testing.TB, users int, ids []string, queued map[string]int) map[string]string {
	tb.Helper()
	out := map[string]string{}
	for _, id := range ids {
		if queued[id] != 0 {
			continue
		}
		for u := range users {
			v, err := s.rdb.HGet(context.Background(), s.prefix+"{u:v"+strconv.Itoa(u)+"}:receipts", id).Result()
			if err == nil {
				out[id] = "v" + strconv.Itoa(u) + ": " + v
			}
		}
	}
	return out
}

// TestAckSecurity: a user cannot acknowledge another's notification (the
// SSE id only names positions in the acker's own stream), and bad requests
// are refused with a JSON error.
func TestAckSecurity(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o})
	c := connect(t, s.edges[0].url, token(t, "vic"))
	n := s.ackOrPush(t, "vic", "secret", 300*time.Millisecond)
	ev := c.next(t, 5*time.Second)
	code, out := ack(t, s.edges[0], "mallory", ev.ID)
	if code != 200 || out["acked"] != 0.0 || out["unknown"] != 1.0 {
		t.Fatalf("mallory's ack of vic's id: %d %v, want nothing acked", code, out)
	}
	s.waitSwept(t)
	if ids := offlineIDs(t, o); ids[n.GetNotificationId()] != 1 {
		t.Fatalf("vic's notification was queued %d times after mallory's ack, want 1 (its fallback)", ids[n.GetNotificationId()])
	}

	for _, tc := range []struct {
		method, auth, body string
		want               int
		code               string
	}{
		{"POST", "", `{"ids":["1"]}`, 401, "unauthorized"},
		{"POST", "Bearer nope", `{"ids":["1"]}`, 401, "unauthorized"},
		{"GET", "Bearer " + token(t, "vic"), ``, 405, "method_not_allowed"},
		{"POST", "Bearer " + token(t, "vic"), `not json`, 400, "bad_body"},
		{"POST", "Bearer " + token(t, "vic"), `{"ids":[]}`, 400, "bad_ids"},
		{"POST", "Bearer " + token(t, "vic"), `{"ids":["abc"]}`, 400, "bad_ids"},
	} {
		req, _ := http.NewRequest(tc.method, s.edges[0].url+"/v1/ack", strings.NewReader(tc.body))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || body["error"] != tc.code {
			t.Errorf("%s %q %q: %d %v, want %d %s", tc.method, tc.auth, tc.body, resp.StatusCode, body, tc.want, tc.code)
		}
	}
}

// TestFallbackWaitsForKafka: a fallback that cannot be queued (Kafka down)
// is tried again, and queued once, when Kafka is back.
func TestFallbackWaitsForKafka(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o})
	resp, cancel := get(t, s.edges[0].url+"/v1/events?access_token="+token(t, "wes"), nil)
	defer cancel()
	defer resp.Body.Close()
	o.Kafka.Stop()
	n := s.ackOrPush(t, "wes", "x", 100*time.Millisecond)
	testenv.WaitFor(t, 10*time.Second, "two failed attempts to queue the fallback", func() bool {
		var errs float64
		for _, reg := range s.sweepers {
			errs += testenv.Counter(t, reg, "herald_router_ack_sweep_errors_total")
		}
		return errs >= 2
	})
	o.Kafka.Start()
	s.waitSwept(t)
	if ids := offlineIDs(t, o); ids[n.GetNotificationId()] != 1 {
		t.Fatalf("queued %d times once Kafka was back, want 1", ids[n.GetNotificationId()])
	}
}
