package sseedge

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// hub multiplexes Redis Pub/Sub over every local stream. It subscribes to a
// channel (a user's, or a topic's) when the first local stream needs it, and
// unsubscribes when the last one leaves, so an edge holds one subscription
// per channel however many clients share it.
//
// The hub's lock guards membership only: which streams read which channel,
// and which channels are wanted. It is never held across network I/O, since
// every delivery takes it: the SUBSCRIBE and UNSUBSCRIBE commands are sent
// in order by one goroutine, the syncer (see sync), which reconciles what
// Redis was asked for with what the streams want.
type hub struct {
	// ps is the link to Redis: one Pub/Sub connection on a single Redis, one
	// sharded connection per primary on a Redis Cluster.
	ps  subscriber
	log *slog.Logger
	// deliver is called for each message, with the hub's lock not held.
	deliver func(channel string, payload []byte)
	// relinked receives a signal when a channel is subscribed again after
	// the connection to Redis was lost and restored, or moved to another
	// shard.
	relinked chan struct{}
	// timeout bounds each command the syncer sends.
	timeout time.Duration
	// dirty wakes the syncer: some channel in todo changed.
	dirty chan struct{}

	mu       sync.Mutex
	channels map[string]*channelEntry
	streams  map[*stream]struct{}
	// todo holds the channels the syncer must look at: wanted and not
	// asked for yet, or no longer wanted.
	todo map[string]struct{}
}

// subscriber is the hub's link to Redis Pub/Sub. It reports confirmed
// subscriptions through hub.confirmed and messages through hub.deliver.
// subscribe and unsubscribe are called by the hub's syncer alone, in order.
type subscriber interface {
	subscribe(ctx context.Context, channels ...string) error
	unsubscribe(ctx context.Context, channels ...string) error
	// run keeps the link up until ctx is done.
	run(ctx context.Context)
	// Close ends the link, and a receive blocked on the network.
	Close() error
	// state is what the link looks like now, for the metrics.
	state() linkState
}

// linkState describes the edge's link to Redis Pub/Sub.
type linkState struct {
	links    int // working Pub/Sub connections
	orphaned int // channels that local streams read and no working connection is subscribed to
}

// channelEntry is the hub's record of one wanted channel. An entry whose
// streams have all left stays until the syncer unsubscribes it.
type channelEntry struct {
	streams map[*stream]struct{}
	ready   chan struct{} // closed when Redis confirmed the subscription
	once    sync.Once
	// sent says the syncer has asked for the subscription; guarded by
	// hub.mu.
	sent bool
	// fail is closed when asking for the subscription failed, for the joins
	// waiting then; guarded by hub.mu, and replaced after.
	fail *failure
	// name is the channel's name, and cursor the name its streams give it
	// in their cursors (stream.names); the streams that read the channel
	// hold these same strings (see join).
	name, cursor string
}

// failure tells the joins waiting on a channel that its subscription could
// not be sent.
type failure struct {
	done chan struct{}
	err  error // set before done is closed
}

func newChannelEntry(name, cursor string) *channelEntry {
	return &channelEntry{
		name:    name,
		cursor:  cursor,
		streams: make(map[*stream]struct{}),
		ready:   make(chan struct{}),
		fail:    &failure{done: make(chan struct{})},
	}
}

func (e *channelEntry) markReady() (first bool) {
	e.once.Do(func() { close(e.ready); first = true })
	return first
}

func (e *channelEntry) isReady() bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// newHub returns the hub of the Redis behind rdb. timeout bounds each
// command sent to Redis for it.
func newHub(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger, grace, timeout time.Duration,
	deliver func(string, []byte), brokerLost func()) *hub {
	h := &hub{
		log:      log,
		deliver:  deliver,
		relinked: make(chan struct{}, 1),
		timeout:  timeout,
		dirty:    make(chan struct{}, 1),
		channels: make(map[string]*channelEntry),
		streams:  make(map[*stream]struct{}),
		todo:     make(map[string]struct{}),
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		h.ps = newShardedSubscriber(ctx, cc, h, grace, timeout)
	} else {
		out := &outage{log: log, grace: grace, lost: brokerLost}
		h.ps = &classicSubscriber{ps: rdb.Subscribe(ctx), hub: h, out: out}
	}
	return h
}

// errSubscribe is returned when Redis did not confirm a subscription.
var errSubscribe = errors.New("sseedge: redis did not confirm the subscription")

// join adds st to the channels it reads, has the syncer subscribe to those
// that are new, and waits until Redis has confirmed every subscription, so
// that every event published after join returns reaches st. Only the wait
// is bounded by ctx: the syncer goes on, and a channel left meanwhile is
// unsubscribed once confirmed.
func (h *hub) join(ctx context.Context, st *stream) error {
	type wait struct {
		ready chan struct{}
		fail  *failure
	}
	waits := make([]wait, 0, len(st.channels))
	h.mu.Lock()
	fresh := false
	for i, ch := range st.channels {
		e, ok := h.channels[ch]
		if !ok {
			e = newChannelEntry(ch, st.names[i])
			h.channels[ch] = e
		}
		// One copy of the names for every stream, which a broadcast's
		// writes find in cache: st is not yet reachable by deliveries,
		// which read them once it is in e.streams.
		st.channels[i] = e.name
		if st.names[i] == e.cursor {
			st.names[i] = e.cursor
		}
		if !e.sent {
			h.todo[ch] = struct{}{}
			fresh = true
		}
		e.streams[st] = struct{}{}
		waits = append(waits, wait{e.ready, e.fail})
	}
	h.streams[st] = struct{}{}
	h.mu.Unlock()
	if fresh {
		h.kick()
	}
	for _, w := range waits {
		select {
		case <-w.ready:
		case <-w.fail.done:
			h.leave(ctx, st)
			return errors.Join(errSubscribe, w.fail.err)
		case <-ctx.Done():
			h.leave(ctx, st)
			return errors.Join(errSubscribe, ctx.Err())
		}
	}
	return nil
}

// leave removes st; the syncer unsubscribes from the channels no stream
// reads any more. It does no I/O: ctx is not used.
func (h *hub) leave(_ context.Context, st *stream) {
	h.mu.Lock()
	if _, ok := h.streams[st]; !ok {
		h.mu.Unlock()
		return
	}
	delete(h.streams, st)
	gone := false
	for _, ch := range st.channels {
		e, ok := h.channels[ch]
		if !ok {
			continue
		}
		delete(e.streams, st)
		if len(e.streams) == 0 {
			h.todo[ch] = struct{}{}
			gone = true
		}
	}
	h.mu.Unlock()
	if gone {
		h.kick()
	}
}

// kick wakes the syncer.
func (h *hub) kick() {
	select {
	case h.dirty <- struct{}{}:
	default:
	}
}

// readers returns a snapshot of the streams that read channel.
func (h *hub) readers(channel string) []*stream {
	out, _ := h.appendReaders(nil, channel)
	return out
}

// appendReaders appends the streams that read channel to buf, and returns
// the hub's copy of the channel's name (channel itself when no stream reads
// it).
func (h *hub) appendReaders(buf []*stream, channel string) ([]*stream, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.channels[channel]
	if !ok {
		return buf, channel
	}
	buf = slices.Grow(buf, len(e.streams))
	for st := range e.streams {
		buf = append(buf, st)
	}
	return buf, e.name
}

// all returns a snapshot of every stream.
func (h *hub) all() []*stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*stream, 0, len(h.streams))
	for st := range h.streams {
		out = append(out, st)
	}
	return out
}

// count is the number of local streams.
func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams)
}

// subscriptions is the number of channels the hub is subscribed to.
func (h *hub) subscriptions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.channels)
}

// confirmed is told that Redis confirmed the subscription to channel. A
// confirmation for a channel that was ready means the channel was
// subscribed again, after a lost connection or on another shard: messages
// published in between are in history, so its streams catch up from there.
// A channel that every stream left while its subscription was on the way
// is handed to the syncer, to unsubscribe.
func (h *hub) confirmed(channel string) {
	h.mu.Lock()
	e, ok := h.channels[channel]
	var again []*stream
	idle := false
	if ok {
		if !e.markReady() {
			for st := range e.streams {
				again = append(again, st)
			}
		}
		if len(e.streams) == 0 {
			h.todo[channel] = struct{}{}
			idle = true
		}
	}
	h.mu.Unlock()
	if idle {
		h.kick()
	}
	for _, st := range again {
		st.signalResync()
	}
	if len(again) > 0 {
		select {
		case h.relinked <- struct{}{}:
		default:
		}
	}
}

// run keeps the link to Redis up, and the syncer going, until ctx is done.
func (h *hub) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { h.sync(ctx) })
	h.ps.run(ctx)
	wg.Wait()
	return nil
}

// pingEvery is how long a receive loop waits for a message before it pings
// Redis, so that a dead connection is found and replaced.
const pingEvery = 2 * time.Second

// outage tracks how long the link to Redis Pub/Sub has been down, and calls
// lost each time it has been down for longer than grace.
type outage struct {
	log    *slog.Logger
	grace  time.Duration
	lost   func()
	since  time.Time   // zero while up
	isDown atomic.Bool // since is not zero; read by the metrics
}

// down records that the link is down (still, or again).
func (o *outage) down(err error) {
	switch {
	case o.since.IsZero():
		o.since = time.Now()
		o.isDown.Store(true)
		o.log.Warn("redis pub/sub connection lost; reconnecting", slog.Any("err", err))
	case o.grace > 0 && time.Since(o.since) > o.grace:
		o.lost()
		o.since = time.Now()
	}
}

// up records that the link works.
func (o *outage) up() {
	if !o.since.IsZero() {
		o.log.Info("redis pub/sub connection restored", slog.Duration("down", time.Since(o.since)))
		o.since = time.Time{}
		o.isDown.Store(false)
	}
}

// classicSubscriber is the link to a single Redis: one Pub/Sub connection.
// go-redis reconnects it when it breaks and resubscribes to every channel
// on it; the confirmations that follow make the hub resync their streams.
type classicSubscriber struct {
	ps  *redis.PubSub
	hub *hub
	out *outage
}

var _ subscriber = (*classicSubscriber)(nil)

func (c *classicSubscriber) subscribe(ctx context.Context, channels ...string) error {
	return c.ps.Subscribe(ctx, channels...)
}

func (c *classicSubscriber) unsubscribe(ctx context.Context, channels ...string) error {
	return c.ps.Unsubscribe(ctx, channels...)
}

func (c *classicSubscriber) Close() error { return c.ps.Close() }

// state: while the connection is down, every channel waits for go-redis to
// reconnect and subscribe it again.
func (c *classicSubscriber) state() linkState {
	if c.out.isDown.Load() {
		return linkState{orphaned: c.hub.subscriptions()}
	}
	return linkState{links: 1}
}

func (c *classicSubscriber) run(ctx context.Context) {
	defer c.ps.Close()
	for ctx.Err() == nil {
		msg, err := c.ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				if err := c.ps.Ping(ctx); err == nil {
					continue
				}
			}
			c.out.down(err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		c.out.up()
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				c.hub.confirmed(m.Channel)
			}
		case *redis.Message:
			c.hub.deliver(m.Channel, stringAsBytes(m.Payload)) // read, never kept (decode copies)
		}
	}
}
