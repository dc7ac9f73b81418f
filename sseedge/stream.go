package sseedge

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
)

// outEvent is one event ready to write, shared by every stream that reads
// its channel. The id: field is per stream (it carries the stream's cursor),
// so it is not part of body.
type outEvent struct {
	channel  string
	eventID  uint64
	body     []byte // event: and data: fields and the dispatching blank line
	accepted time.Time
	// id is the notification id; user is set for a user's notification (not
	// a topic's). traced says the router keeps its trail, which the edge
	// then extends.
	id, user, correlation string
	traced                bool
	// trace is the trace context the event came with; nil when tracing is
	// off, or the event has none.
	trace *eventTrace
}

// maxBatch is the most queued events one write carries.
const maxBatch = 32

// stream is one client connection's state. What waits for the connection
// (queue, resync, heartbeat, reason) is guarded by mu. The positions and the
// replay belong to the stream's writer: the handler goroutine or, once the
// connection is taken over from net/http (out is set), whoever holds busy.
type stream struct {
	user     string
	conn     presence.Conn
	streams  []delivery.Stream // the user's stream, then one per topic
	names    []string          // cursor names: "" for the user, then the topics
	channels []string          // the streams' channels
	// expires is when the client's token expires, in Unix nanoseconds.
	expires int64
	// client is the address counted against MaxConnsPerIP for the stream,
	// if it is counted.
	client netip.Prefix
	// budget counts the bytes the edge holds for its streams; nil counts
	// nothing.
	budget *budget

	mu sync.Mutex
	// done is closed when the stream ends (reason is set); made on demand
	// (see ended), since few streams ever wait on it.
	done chan struct{}
	// queue holds the events waiting to be written. It is allocated on
	// demand, and a backlog's array is let go once written.
	queue []*outEvent
	// held is what the stream holds, in bytes of event data, counted in
	// budget: its queue and its catch-up's pages (queueBytes is the queue's
	// share). A closed stream holds nothing: close gives it all back.
	held, queueBytes int64
	// reason is why the stream ends: set once, by close.
	reason CloseReason
	// wake is signalled when there is something to do, for the handler
	// goroutine.
	wake chan struct{}
	// out is the connection once taken over; with it, busy says a writer
	// holds the stream. heartbeat says a heartbeat is due, and lastWrite
	// is when the client was last written to (see writers.clock, or
	// held.clock for a stream served on its handler goroutine).
	out       *wire
	lastWrite int64
	busy      bool
	heartbeat bool
	// resync says the stream owes its client a page of catch-up from
	// history, to write before anything else; relinked that the Redis link
	// came back, so the catch-up starts (again) from the positions.
	resync   bool
	relinked bool
	// queueSize bounds queue; a stream whose queue is full is too slow.
	queueSize int32

	pos []uint64 // the client's position in each stream
	// replay is the catch-up from history in progress, if any;
	// replayBytes are the bytes of events it has read and not written, and
	// pageBytes those of the page being written (see replay.go).
	replay                 *replay
	replayBytes, pageBytes int
}

func newStream(user, edge string, now time.Time, queueSize int, prefix string, topics []string) *stream {
	st := &stream{
		user:      user,
		conn:      presence.Conn{User: user, ID: randomHex(8), Edge: edge, Since: now},
		queueSize: int32(min(queueSize, math.MaxInt32)),
		wake:      make(chan struct{}, 1),
	}
	st.add("", delivery.UserStream(user), prefix)
	for _, t := range topics {
		st.add(t, delivery.TopicStream(t), prefix)
	}
	st.pos = make([]uint64, len(st.names))
	return st
}

func (st *stream) add(name string, s delivery.Stream, prefix string) {
	st.names = append(st.names, name)
	st.streams = append(st.streams, s)
	st.channels = append(st.channels, delivery.Channel(prefix, s))
}

// label names stream i for a client: "user" or "topic:<name>".
func (st *stream) label(i int) string {
	if i == 0 {
		return "user"
	}
	return "topic:" + st.names[i]
}

// appendLive appends ev with the stream's cursor as its id and advances the
// cursor, unless the client already has ev (it was replayed from history):
// then it reports false and appends nothing.
func (st *stream) appendLive(b []byte, ev *outEvent) ([]byte, bool) {
	i := -1
	for j, ch := range st.channels {
		if ch == ev.channel {
			i = j
			break
		}
	}
	if i < 0 || ev.eventID <= st.pos[i] {
		return b, false
	}
	st.pos[i] = ev.eventID
	return append(st.appendID(b), ev.body...), true
}

// appendID appends an id: field holding the stream's cursor.
func (st *stream) appendID(b []byte) []byte {
	b = append(b, "id: "...)
	b = appendCursor(b, st.names, st.pos)
	return append(b, '\n')
}

// offer queues ev without blocking; false means the queue is full. Events
// offered to a closing stream are dropped.
func (st *stream) offer(ev *outEvent) bool {
	st.mu.Lock()
	if st.reason != "" {
		st.mu.Unlock()
		return true
	}
	if len(st.queue) >= int(st.queueSize) {
		st.mu.Unlock()
		return false
	}
	st.queue = append(st.queue, ev)
	st.queueBytes += int64(len(ev.body))
	st.chargeLocked(int64(len(ev.body)))
	st.notifyLocked()
	return true
}

// offerHeld is offer for a caller that writes the stream itself: when the
// stream is taken over and no writer holds it, it is held for the caller
// (busy) instead of handed to the pool, and held is true: the caller must
// pump it (writers.pumpHere).
func (st *stream) offerHeld(ev *outEvent) (ok, held bool) {
	st.mu.Lock()
	if st.reason != "" {
		st.mu.Unlock()
		return true, false
	}
	if len(st.queue) >= int(st.queueSize) {
		st.mu.Unlock()
		return false, false
	}
	st.queue = append(st.queue, ev)
	st.queueBytes += int64(len(ev.body))
	st.chargeLocked(int64(len(ev.body)))
	if st.out == nil || st.busy {
		st.notifyLocked()
		return true, false
	}
	st.busy = true
	st.mu.Unlock()
	return true, true
}

// signalResync asks the stream's writer to catch up from history: the
// Redis link came back.
func (st *stream) signalResync() {
	st.mu.Lock()
	st.resync, st.relinked = true, true
	st.notifyLocked()
}

// owe tells the stream's writer that its catch-up has another page.
func (st *stream) owe() {
	st.mu.Lock()
	st.resync = true
	st.notifyLocked()
}

// takeRelinked reports whether the Redis link came back since the last
// call.
func (st *stream) takeRelinked() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.relinked
	st.relinked = false
	return r
}

// charge counts n more bytes (or fewer, if negative) held by the stream.
func (st *stream) charge(n int64) {
	st.mu.Lock()
	st.chargeLocked(n)
	st.mu.Unlock()
}

func (st *stream) chargeLocked(n int64) {
	if st.reason != "" {
		// Given back at close.
		return
	}
	st.held += n
	st.budget.add(n)
}

// cut ends a blocked write of a closed, taken-over stream (see wire.cut).
func (st *stream) cut() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.out != nil {
		st.out.cutLocked()
	}
}

// weight is what the stream holds, in bytes.
func (st *stream) weight() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.held
}

// close ends the stream with reason; only the first call counts, and
// reports true. What the stream holds is given back to the budget at once,
// and its queue let go.
func (st *stream) close(reason CloseReason) bool {
	return st.closeThen(reason, nil)
}

// closeThen is close, which calls won, unless it is nil, when this call is
// the one that ends the stream, before a writer can see the end: what won
// counts is counted before the stream's client sees it closed.
func (st *stream) closeThen(reason CloseReason, won func()) bool {
	st.mu.Lock()
	if st.reason != "" {
		st.mu.Unlock()
		return false
	}
	if won != nil {
		won()
	}
	st.reason = reason
	st.budget.add(-st.held)
	st.held, st.queueBytes = 0, 0
	clear(st.queue)
	st.queue = nil
	if st.done != nil {
		close(st.done)
	}
	st.notifyLocked()
	return true
}

// ended returns a channel closed when the stream ends.
func (st *stream) ended() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done == nil {
		st.done = make(chan struct{})
		if st.reason != "" {
			close(st.done)
		}
	}
	return st.done
}

// expiry returns t, when a token expires, in Unix nanoseconds, as far as
// they reach (the year 2262).
func expiry(t time.Time) int64 {
	if t.After(time.Unix(0, math.MaxInt64)) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// closed returns the reason the stream ended, or "" while it is open.
func (st *stream) closed() CloseReason {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.reason
}

// notifyLocked tells the stream's writer there is something to do, and
// unlocks st.mu. A taken-over stream that no writer holds is handed to the
// writers, after the unlock: handing over may wait for a free writer.
func (st *stream) notifyLocked() {
	out, wake := st.out, st.wake
	if out == nil {
		st.mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
		return
	}
	idle := !st.busy
	st.busy = true
	st.mu.Unlock()
	if idle {
		out.writers.schedule(st)
	}
}

// take returns what the writer should do next, in order: end the stream
// (reason), catch up from history (resync), or write the events moved from
// the queue into batch (at most maxBatch), or a heartbeat. With nothing to
// do, a taken-over stream is released (busy is cleared) and ok is false.
func (st *stream) take(batch []*outEvent) (_ []*outEvent, resync, heartbeat bool, reason CloseReason, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.reason != "":
		return batch, false, false, st.reason, true
	case st.resync:
		st.resync = false
		return batch, true, false, "", true
	}
	n := min(len(st.queue), maxBatch)
	batch = append(batch, st.queue[:n]...)
	var size int64
	for _, ev := range st.queue[:n] {
		size += int64(len(ev.body))
	}
	st.queueBytes -= size
	st.chargeLocked(-size)
	left := copy(st.queue, st.queue[n:])
	clear(st.queue[left:])
	st.queue = st.queue[:left]
	if left == 0 && cap(st.queue) > maxBatch {
		// A burst is over: let its queue go.
		st.queue = nil
	}
	if left > 0 && st.out == nil {
		// The handler goroutine takes the rest on its next turn.
		select {
		case st.wake <- struct{}{}:
		default:
		}
	}
	heartbeat, st.heartbeat = st.heartbeat, false
	if n == 0 && !heartbeat {
		st.busy = false
		return batch, false, false, "", false
	}
	return batch, false, heartbeat, "", true
}
