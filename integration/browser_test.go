package integration_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/browser"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
	"github.com/herald-push/herald/sseedge/demopage"
)

// A real browser's EventSource receives events, survives an edge restart,
// and after reconnecting shows the events published while it was away,
// exactly once each. The test reads the page's DOM.
func TestBrowserSurvivesEdgeRestart(t *testing.T) {
	s := newSystemWith(t, options{edges: 1, pages: demopage.Handler(), edge: sseedge.Config{Retry: 300 * time.Millisecond}})
	edge := s.edges[0]
	b := browser.Start(t)
	p := b.Open(t, edge.url+"/?access_token="+token(t, "bea"))
	browser.WaitFor(t, p, "window.herald.state === 'open'", 10*time.Second)

	send := func(i int) {
		s.notify(t, &heraldv1.NotifyRequest{UserId: "bea", Event: "hello", Data: []byte(fmt.Sprintf("n%d", i))})
	}
	for i := range 3 {
		send(i)
	}
	browser.WaitFor(t, p, "window.herald.events.length === 3", 10*time.Second)

	// Restart the edge on the same address; publish while it is down.
	if err := edge.Stop(); err != nil {
		t.Fatal(err)
	}
	s.waitOffline(t, "bea")
	for i := 3; i < 6; i++ {
		send(i)
	}
	s.edges[0] = s.startEdge(t, "edge-0-restarted", edge.Addr)
	browser.WaitFor(t, p, "window.herald.opens >= 2 && window.herald.events.length >= 6", 15*time.Second)
	send(6)
	browser.WaitFor(t, p, "window.herald.events.length >= 7", 10*time.Second)

	// The DOM shows every event exactly once, in order.
	got := browser.Eval[[]string](t, p, `Array.from(document.querySelectorAll('#events li')).map(li => li.textContent)`)
	ids := browser.Eval[[]string](t, p, `Array.from(document.querySelectorAll('#events li')).map(li => li.dataset.id)`)
	if len(got) != 7 {
		t.Fatalf("page shows %d events, want 7: %q", len(got), got)
	}
	seen := map[string]bool{}
	for i, text := range got {
		if !strings.Contains(text, fmt.Sprintf("n%d", i)) {
			t.Errorf("event %d on the page is %q, want n%d", i, text, i)
		}
		if seen[ids[i]] {
			t.Errorf("event id %s shown twice", ids[i])
		}
		seen[ids[i]] = true
	}
	if resets := browser.Eval[int](t, p, "window.herald.resets"); resets != 0 {
		t.Errorf("page got %d resets, want none", resets)
	}
}

// A real browser acknowledges an ack-or-push notification it showed (the
// demo page acks what it shows), so it is not pushed.
func TestBrowserAcknowledges(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	s := newSystemWith(t, options{edges: 1, offline: o, pages: demopage.Handler()})
	b := browser.Start(t)
	p := b.Open(t, s.edges[0].url+"/?access_token="+token(t, "cai"))
	browser.WaitFor(t, p, "window.herald.state === 'open'", 10*time.Second)
	n := s.ackOrPush(t, "cai", "order 42 filled", 3*time.Second)
	browser.WaitFor(t, p, "window.herald.events.length === 1 && window.herald.acked === 1", 10*time.Second)
	s.waitSwept(t)
	if ids := offlineIDs(t, o); ids[n.GetNotificationId()] != 0 {
		t.Fatalf("a notification the browser acknowledged was queued for a push")
	}
}
