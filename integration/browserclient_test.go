package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/browser"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// The tests of herald.js, the browser client the edge serves at
// /v1/herald.js, in headless Chromium. Each runs a small application page
// (clientApp) that reads the stream with the client and records what the
// client hands it, and checks exact delivery: every event once, in order.

// clientAppPage is the application. Its URL says whose stream it reads
// (user), its topics (topic), the lifetime of the tokens it gets (ttl),
// whether its first token is one the edge refuses (badfirst=1), whether
// the client acknowledges (noack=1 turns it off) and whether it comes back
// after herald.replaced when the tab is shown again (resume=0 turns it off). It gets its tokens from
// /token, as an application gets them from its own auth service.
const clientAppPage = `<!doctype html>
<meta charset="utf-8">
<title>herald.js test application</title>
<script type="module">
import { connect } from "/v1/herald.js";
const own = new URLSearchParams(location.search);
const rec = window.rec = { events: [], log: [], resets: 0, tokens: 0, opens: 0, errors: [], acked: 0, late: 0, state: "" };
window.client = connect({
  topics: own.getAll("topic"),
  autoAck: own.get("noack") !== "1",
  resumeOnVisible: own.get("resume") !== "0",
  token: async () => {
    rec.tokens++;
    const q = new URLSearchParams({ user: own.get("user"), ttl: own.get("ttl") || "1h" });
    for (const t of own.getAll("topic")) q.append("topic", t);
    if (own.get("badfirst") === "1" && rec.tokens === 1) q.set("bad", "1");
    const res = await fetch("/token?" + q);
    if (!res.ok) throw new Error("token: " + res.status);
    return res.text();
  },
  onEvent: (e) => { rec.events.push(e); rec.log.push(e.data); },
  onReset: (r) => { rec.resets++; rec.log.push("reset:" + r.reason); },
  onStateChange: (s) => { rec.state = s; if (s === "open") rec.opens++; },
  onError: (e) => { rec.errors.push(e.message); },
  onAck: (a) => { rec.acked += a.acked; rec.late += a.late; },
});
</script>
`

// clientApp serves clientAppPage at / and tokens at /token.
func clientApp(tb testing.TB) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ttl, err := time.ParseDuration(q.Get("ttl"))
		if err != nil || q.Get("user") == "" {
			http.Error(w, "want user and ttl", http.StatusBadRequest)
			return
		}
		secret := testSecret
		if q.Get("bad") == "1" {
			secret = []byte("a-secret-the-edge-does-not-know-0123")
		}
		tok, err := sseedge.IssueToken(secret, q.Get("user"), ttl, time.Now(), q["topic"]...)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(tok))
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(clientAppPage))
	})
	return mux
}

// openClientApp opens the application on edge e with query, and waits for
// its stream to open.
func openClientApp(t *testing.T, b *browser.Browser, e *testEdge, query string) *browser.Page {
	t.Helper()
	p := b.Open(t, e.url+"/?"+query)
	browser.WaitFor(t, p, "window.rec.state === 'open'", 15*time.Second)
	return p
}

// checkLog fails the test unless the application was handed exactly want
// (event data, and "reset:<reason>" for each herald.reset), with distinct
// event ids whose user positions never go back.
func checkLog(t *testing.T, p *browser.Page, want []string) {
	t.Helper()
	if got := browser.Eval[[]string](t, p, "window.rec.log"); !slices.Equal(got, want) {
		t.Fatalf("the application was handed\n%q\nwant\n%q", got, want)
	}
	ids := browser.Eval[[]string](t, p, "window.rec.events.map(e => e.id)")
	seen := map[string]bool{}
	var last uint64
	for _, id := range ids {
		if seen[id] {
			t.Errorf("event id %s handed on twice", id)
		}
		seen[id] = true
		user, _, _ := strings.Cut(id, ";")
		pos, err := strconv.ParseUint(user, 10, 64)
		if err != nil || pos < last {
			t.Errorf("event id %q: user position not a number, or behind %d", id, last)
		}
		last = pos
	}
}

// notifyData sends user a fire-and-forget notification carrying data.
func (s *system) notifyData(t *testing.T, user, data string) {
	t.Helper()
	s.notify(t, &heraldv1.NotifyRequest{UserId: user, Event: "update", Data: []byte(data)})
}

// a) Short-lived tokens: the client asks the application for a new one
// before each expires (and once after the edge refused the first), and
// moves its stream to it without losing or repeating an event, while
// notifications keep coming.
func TestBrowserClientRefreshesToken(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, pages: clientApp(t), edge: sseedge.Config{Retry: 300 * time.Millisecond}})
	b := browser.Start(t)
	// A 4 s token is refreshed a quarter of its life before it expires.
	p := openClientApp(t, b, s.edges[0], "user=ada&ttl=4s&badfirst=1")
	if n := browser.Eval[int](t, p, "window.rec.tokens"); n != 2 {
		t.Fatalf("the application was asked for %d tokens before the stream opened, want 2 (the refused one, then a good one)", n)
	}

	// Notifications, every few milliseconds and without waiting for them,
	// so that some are in flight while the stream moves, until the client
	// has refreshed its token twice (tokens 3 and 4) and closed a stream
	// for each, to open the next with the new token.
	var want []string
	for i := 0; ; i++ {
		if i == 3000 {
			t.Fatalf("after %d notifications the client asked for %d tokens and closed %v streams, want 4 and 2",
				i, browser.Eval[int](t, p, "window.rec.tokens"), s.edges[0].closed(sseedge.CloseClientClosed))
		}
		data := fmt.Sprintf("n%d", i)
		s.notifyData(t, "ada", data)
		want = append(want, data)
		if i%20 == 0 && browser.Eval[int](t, p, "window.rec.tokens") >= 4 && s.edges[0].closed(sseedge.CloseClientClosed) >= 2 {
			break
		}
		time.Sleep(5 * time.Millisecond) // pace the notifications across the refreshes
	}
	browser.WaitFor(t, p, fmt.Sprintf("window.rec.events.length >= %d", len(want)), 20*time.Second)
	checkLog(t, p, want)
	if errs := browser.Eval[[]string](t, p, "window.rec.errors"); len(errs) != 0 {
		t.Errorf("the client reported errors: %q", errs)
	}
	// Each stream moved to its new token before the old one ran out.
	if n := s.edges[0].closed(sseedge.CloseTokenExpired); n != 0 {
		t.Errorf("the edge closed %v streams as token_expired, want none", n)
	}
}

// b) The client acknowledges an ack-or-push notification by itself, and
// the fallback push does not happen; the same notification to a client that
// does not acknowledge is pushed.
func TestBrowserClientAckPreventsPush(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o, pages: clientApp(t)})
	o.StartWorker(t, o.WorkerConfig(), nil)
	o.Register(t, "cai", "tok-cai")
	o.Register(t, "dov", "tok-dov")
	b := browser.Start(t)
	acking := openClientApp(t, b, s.edges[0], "user=cai")
	silent := openClientApp(t, b, s.edges[0], "user=dov&noack=1")

	n := s.ackOrPush(t, "cai", "order 42 filled", 3*time.Second)
	control := s.ackOrPush(t, "dov", "order 43 filled", 3*time.Second)
	browser.WaitFor(t, acking, "window.rec.events.length === 1 && window.rec.acked === 1", 10*time.Second)
	browser.WaitFor(t, silent, "window.rec.events.length === 1", 10*time.Second)
	s.waitSwept(t)

	ids := offlineIDs(t, o)
	if ids[n.GetNotificationId()] != 0 {
		t.Errorf("the notification the client acknowledged was queued for a push")
	}
	if ids[control.GetNotificationId()] != 1 {
		t.Errorf("the notification nobody acknowledged was queued %d times, want once", ids[control.GetNotificationId()])
	}
	o.WaitPushes(t, 1)
	var tokens []string
	for _, m := range o.Emulator.Messages() {
		tokens = append(tokens, m.Token)
	}
	if !slices.Equal(tokens, []string{"tok-dov"}) {
		t.Errorf("the emulator got pushes to %q, want one to tok-dov", tokens)
	}
	checkLog(t, acking, []string{"order 42 filled"})
	checkLog(t, silent, []string{"order 43 filled"})
	if late := browser.Eval[int](t, acking, "window.rec.late"); late != 0 {
		t.Errorf("%d acknowledgements were late", late)
	}
}

// c) A client away for longer than history holds is handed herald.reset
// when it comes back, and then the live events, each once.
func TestBrowserClientResetAfterGap(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, pages: clientApp(t),
		history: delivery.HistoryConfig{Length: 5}, edge: sseedge.Config{Retry: 300 * time.Millisecond}})
	edge := s.edges[0]
	b := browser.Start(t)
	p := openClientApp(t, b, edge, "user=bo")
	for i := range 3 {
		s.notifyData(t, "bo", fmt.Sprintf("n%d", i))
	}
	browser.WaitFor(t, p, "window.rec.events.length === 3", 10*time.Second)

	if err := edge.Stop(); err != nil {
		t.Fatal(err)
	}
	s.waitOffline(t, "bo")
	for i := range beyondHistory {
		s.notifyData(t, "bo", fmt.Sprintf("gone%d", i))
	}
	s.edges[0] = s.startEdge(t, "edge-0-restarted", edge.Addr)
	browser.WaitFor(t, p, "window.rec.resets === 1 && window.rec.state === 'open'", 20*time.Second)
	for i := 3; i < 5; i++ {
		s.notifyData(t, "bo", fmt.Sprintf("n%d", i))
	}
	browser.WaitFor(t, p, "window.rec.events.length === 5", 10*time.Second)
	checkLog(t, p, []string{"n0", "n1", "n2", "reset:history_gap", "n3", "n4"})
}

// d) Across an edge restart the client reconnects from its cursor, over
// the user's stream and a topic, and is handed what it missed and what
// follows, each once, in each stream's order.
func TestBrowserClientSurvivesEdgeRestart(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, pages: clientApp(t), edge: sseedge.Config{Retry: 300 * time.Millisecond}})
	edge := s.edges[0]
	b := browser.Start(t)
	p := openClientApp(t, b, edge, "user=cy&topic=news")
	send := func(i int) {
		s.notifyData(t, "cy", fmt.Sprintf("n%d", i))
		if _, err := s.router.Broadcast(context.Background(), &heraldv1.BroadcastRequest{
			Topic: "news", Event: "headline", Data: fmt.Appendf(nil, "t%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		send(i)
	}
	browser.WaitFor(t, p, "window.rec.events.length === 6", 10*time.Second)

	if err := edge.Stop(); err != nil {
		t.Fatal(err)
	}
	s.waitOffline(t, "cy")
	for i := 3; i < 6; i++ {
		send(i)
	}
	s.edges[0] = s.startEdge(t, "edge-0-restarted", edge.Addr)
	browser.WaitFor(t, p, "window.rec.opens >= 2 && window.rec.events.length >= 12", 20*time.Second)
	send(6)
	browser.WaitFor(t, p, "window.rec.events.length >= 14", 10*time.Second)

	// Events of one stream keep their order; those of the two streams sent
	// in the same millisecond may come either way round.
	log := browser.Eval[[]string](t, p, "window.rec.log")
	var user, topic, wantUser, wantTopic []string
	for _, d := range log {
		if strings.HasPrefix(d, "n") {
			user = append(user, d)
		} else {
			topic = append(topic, d)
		}
	}
	for i := range 7 {
		wantUser = append(wantUser, fmt.Sprintf("n%d", i))
		wantTopic = append(wantTopic, fmt.Sprintf("t%d", i))
	}
	if !slices.Equal(user, wantUser) || !slices.Equal(topic, wantTopic) {
		t.Fatalf("the application was handed %q; want %q and %q, each once and in order", log, wantUser, wantTopic)
	}
	ids := browser.Eval[[]string](t, p, "window.rec.events.map(e => e.id)")
	if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
		t.Errorf("an event id was handed on twice: %q", ids)
	}
	if n := browser.Eval[int](t, p, "window.rec.resets"); n != 0 {
		t.Errorf("the client was handed %d resets, want none", n)
	}
}

// e) A tab that made way for a newer one of its user (herald.replaced) does
// not take its place back, as EventSource would after the retry: of ten
// times -retry; on reconnect() (the user is back on it) it takes it, and
// catches up on what it missed.
func TestBrowserClientReplaced(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, pages: clientApp(t),
		edge: sseedge.Config{Retry: 100 * time.Millisecond, MaxConnsPerUser: 1}})
	edge := s.edges[0]
	b := browser.Start(t)
	first := openClientApp(t, b, edge, "user=di&resume=0")
	second := openClientApp(t, b, edge, "user=di&resume=0")
	browser.WaitFor(t, first, "window.rec.state === 'replaced'", 10*time.Second)
	// Long enough for a client that honours only retry: (1 s) to come back.
	time.Sleep(2500 * time.Millisecond)
	s.notifyData(t, "di", "n0")
	browser.WaitFor(t, second, "window.rec.events.length === 1", 10*time.Second)
	if st := browser.Eval[string](t, first, "window.rec.state"); st != "replaced" {
		t.Fatalf("the replaced tab is %q, want it to stay replaced", st)
	}
	if n := edge.closed(sseedge.CloseReplaced); n != 1 {
		t.Fatalf("the edge replaced %v streams, want 1: the tabs fought", n)
	}

	browser.Eval[bool](t, first, "window.client.reconnect(), true")
	browser.WaitFor(t, second, "window.rec.state === 'replaced'", 10*time.Second)
	browser.WaitFor(t, first, "window.rec.state === 'open'", 10*time.Second)
	s.notifyData(t, "di", "n1")
	browser.WaitFor(t, first, "window.rec.events.length === 2", 10*time.Second)
	checkLog(t, first, []string{"n0", "n1"})
	checkLog(t, second, []string{"n0"})
	if n := edge.closed(sseedge.CloseReplaced); n != 2 {
		t.Errorf("the edge replaced %v streams, want 2", n)
	}
}
