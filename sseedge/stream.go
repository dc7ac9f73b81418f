package sseedge

import (
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
	// a topic's), whose trail the edge extends.
	id, user, correlation string
}

// stream is one client connection's state. The fields below done are owned
// by the connection's handler goroutine.
type stream struct {
	user     string
	conn     presence.Conn
	streams  []delivery.Stream // the user's stream, then one per topic
	names    []string          // cursor names: "" for the user, then the topics
	channels []string          // the streams' channels
	queue    chan *outEvent
	resync   chan struct{}
	done     chan struct{}
	once     sync.Once
	// reason is written once, before done is closed.
	reason CloseReason

	pos     []uint64          // the client's position in each stream
	pending []delivery.Replay // what to replay when the stream starts
}

func newStream(user, edge string, now time.Time, queueSize int, prefix string, topics []string) *stream {
	st := &stream{
		user:   user,
		conn:   presence.Conn{User: user, ID: randomHex(8), Edge: edge, Since: now},
		queue:  make(chan *outEvent, queueSize),
		resync: make(chan struct{}, 1),
		done:   make(chan struct{}),
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

// positions returns pointers to the current positions, for History.Since.
func (st *stream) positions() []*uint64 {
	out := make([]*uint64, len(st.pos))
	for i := range st.pos {
		p := st.pos[i]
		out[i] = &p
	}
	return out
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

// offer queues ev without blocking; false means the queue is full.
func (st *stream) offer(ev *outEvent) bool {
	select {
	case st.queue <- ev:
		return true
	default:
		return false
	}
}

// signalResync asks the handler to catch up from history.
func (st *stream) signalResync() {
	select {
	case st.resync <- struct{}{}:
	default:
	}
}

// close ends the stream with reason; only the first call counts.
func (st *stream) close(reason CloseReason) {
	st.once.Do(func() {
		st.reason = reason
		close(st.done)
	})
}
