package integration_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
)

// The accounting harness's books. When the load and the fault are over,
// every notification the router accepted must be accounted for exactly
// once: received once over SSE (live or recovered with Last-Event-ID),
// pushed once through the FCM emulator, or dead-lettered, and nothing may
// be left in the offline or retry topic that the worker has not committed.
// docs/reliability.md allows two exceptions, each only where its fault
// causes it (see exceptions).

// exceptions are the departures from exactly once that docs/reliability.md
// documents for a fault.
type exceptions struct {
	// pushedTwice: a worker killed after FCM accepted a push, before it
	// recorded the push in its dedupe window, leaves it to be pushed again
	// by the next worker (at least once).
	pushedTwice bool
	// sseAndPush: a notification sent while a dead edge's lease still
	// lives is pushed (stale_presence) and also recovered over SSE when the
	// client reconnects.
	sseAndPush bool
}

// ledger is where the accepted notifications ended up.
type ledger struct {
	accepted int
	// Accounted for exactly once, by way.
	sse, push, dead int
	// Departures from exactly once; each lists its notification ids.
	sseTwice, pushedTwice, sseAndPush, deadAndDelivered []string
	// missing were found nowhere: still queued, or lost.
	missing []string
	// backlog is what the worker's groups had not committed, by topic and
	// partition.
	backlog map[string]map[int]testenv.Span
}

func (l ledger) queued() int64 {
	var n int64
	for _, spans := range l.backlog {
		for _, s := range spans {
			n += s.Len()
		}
	}
	return n
}

func (l ledger) String() string {
	return fmt.Sprintf("accepted=%d sse=%d push=%d dead_lettered=%d sse_and_push=%d pushed_twice=%d sse_twice=%d dead_and_delivered=%d unaccounted=%d uncommitted_records=%d",
		l.accepted, l.sse, l.push, l.dead, len(l.sseAndPush), len(l.pushedTwice), len(l.sseTwice), len(l.deadAndDelivered),
		len(l.missing), l.queued())
}

// account looks everywhere once. The worker's backlog is read first: a
// record it has committed has its push or dead letter made already.
func (h *harness) account() ledger {
	h.t.Helper()
	backlog := h.o.Backlog(h.t)
	sse := map[string]int{}
	for _, c := range h.collectors {
		c.mu.Lock()
		for p, n := range c.got {
			sse[p] += n
		}
		c.mu.Unlock()
	}
	pushed := map[string]int{}
	for _, m := range h.o.Emulator.Messages() {
		pushed[m.Data[fcm.DataID]]++
	}
	h.mu.Lock()
	accepted := maps.Clone(h.accepted)
	h.mu.Unlock()
	dead := map[string]bool{}
	for id, a := range accepted {
		if sse[a.payload] == 0 && pushed[id] == 0 {
			// Read only when something may be there: it is the slowest
			// place to look.
			for _, d := range h.o.DeadLetters(h.t) {
				dead[d.GetEnvelope().GetId()] = true
			}
			break
		}
	}
	l := ledger{accepted: len(accepted), backlog: backlog}
	for _, id := range slices.Sorted(maps.Keys(accepted)) {
		s, p := sse[accepted[id].payload], pushed[id]
		d := dead[id]
		switch {
		case s == 0 && p == 0 && !d:
			l.missing = append(l.missing, id)
			continue
		case d && (s > 0 || p > 0):
			l.deadAndDelivered = append(l.deadAndDelivered, id)
			continue
		}
		if s > 1 {
			l.sseTwice = append(l.sseTwice, id)
		}
		if p > 1 {
			l.pushedTwice = append(l.pushedTwice, id)
		}
		switch {
		case s > 0 && p > 0:
			l.sseAndPush = append(l.sseAndPush, id)
		case s == 1:
			l.sse++
		case p == 1:
			l.push++
		case d:
			l.dead++
		}
	}
	return l
}

// settle waits until every accepted notification is found and the worker
// has committed everything queued, or 30 s, and returns the books.
func (h *harness) settle() ledger {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l := h.account()
		if len(l.missing) == 0 && l.queued() == 0 || time.Now().After(deadline) {
			return l
		}
		time.Sleep(100 * time.Millisecond) // polling, as testenv.WaitFor does
	}
}

// report logs the accounting line, and fails the test, saying what is
// wrong with which notifications, unless every accepted notification is
// accounted for exactly once but for the exceptions h.allow.
func (h *harness) report(name string, l ledger) {
	h.t.Helper()
	h.mu.Lock()
	allow := h.allow
	line := fmt.Sprintf("accounting[%s]: %s refused=%d failed_retryable=%d failed_other=%d (accepted after a retry: %d)",
		name, l, h.refused, h.retryable, len(h.other), h.retried)
	h.mu.Unlock()
	h.t.Log(line)
	var problems []string
	if l.accepted == 0 {
		problems = append(problems, "nothing was accepted")
	}
	if len(l.missing) > 0 {
		problems = append(problems, fmt.Sprintf("%d accepted notifications are not accounted for after 30 s:\n%s",
			len(l.missing), h.whereabouts(l.missing)))
	}
	if q := l.queued(); q > 0 {
		problems = append(problems, fmt.Sprintf("%d records are still queued, not committed by the worker (%s): %v",
			q, testenv.WorkerGroup, l.backlog))
	}
	dup := func(ids []string, allowed bool, what string) {
		if len(ids) > 0 && !allowed {
			problems = append(problems, fmt.Sprintf("%d notifications were %s:\n%s", len(ids), what, h.describe(ids)))
		}
	}
	if len(l.sseTwice) > 0 {
		problems = append(problems, fmt.Sprintf("%d notifications were received twice over SSE:\n%s", len(l.sseTwice),
			h.list(l.sseTwice, h.copies)))
	}
	dup(l.deadAndDelivered, false, "dead-lettered and delivered")
	dup(l.pushedTwice, allow.pushedTwice, "pushed twice, which only a killed worker may cause")
	dup(l.sseAndPush, allow.sseAndPush, "both received over SSE and pushed, which only a dead edge's lease may cause")
	if len(problems) > 0 {
		h.t.Fatalf("%s\n%s", line, strings.Join(problems, "\n"))
	}
}

// describe lists up to 20 of ids, each with its payload, user, route and
// when it was accepted relative to the fault.
func (h *harness) describe(ids []string) string {
	return h.list(ids, func(string) string { return "" })
}

// copies says where the collectors received notification id's payload
// (the edge, the collector's stream and the event's id). list calls it
// with h.mu held.
func (h *harness) copies(id string) string {
	p := h.accepted[id].payload
	var out []string
	for _, c := range h.collectors {
		c.mu.Lock()
		out = append(out, c.copies[p]...)
		c.mu.Unlock()
	}
	return "; received from " + strings.Join(out, ", from ")
}

// whereabouts is describe with where each notification is in the offline
// and retry topics, and whether the worker has committed it there.
func (h *harness) whereabouts(ids []string) string {
	backlog := h.o.Backlog(h.t)
	where := map[string][]string{}
	for _, topic := range []string{queue.DefaultOfflineTopic, queue.DefaultRetryTopic} {
		for _, m := range h.o.Kafka.ReadAll(topic) {
			for _, hd := range m.Headers {
				if hd.Key != queue.HeaderNotificationID {
					continue
				}
				state := "committed by the worker, yet neither pushed nor dead-lettered"
				if s, ok := backlog[topic][m.Partition]; ok && m.Offset >= s.From {
					state = "not committed: still queued"
				}
				id := string(hd.Value)
				where[id] = append(where[id], fmt.Sprintf("%s/%d@%d, %s", topic, m.Partition, m.Offset, state))
			}
		}
	}
	return h.list(ids, func(id string) string {
		if w := where[id]; len(w) > 0 {
			return "; in " + strings.Join(w, "; in ")
		}
		return "; in no topic: lost"
	})
}

func (h *harness) list(ids []string, where func(id string) string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for i, id := range ids {
		if i == 20 {
			fmt.Fprintf(&b, "  ... and %d more\n", len(ids)-i)
			break
		}
		a := h.accepted[id]
		fmt.Fprintf(&b, "  %s (%s to %s, %v, accepted %+v after the fault began)%s\n",
			id, a.payload, a.user, a.route, a.at.Sub(h.faultStart).Round(time.Millisecond), where(id))
	}
	return b.String()
}
