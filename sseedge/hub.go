package sseedge

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// hub multiplexes one Redis Pub/Sub connection over every local stream. It
// subscribes to a channel (a user's, or a topic's) when the first local
// stream needs it, and unsubscribes when the last one leaves, so an edge
// holds one subscription per channel however many clients share it.
type hub struct {
	ps  *redis.PubSub
	log *slog.Logger
	// deliver is called for each message, with the hub's lock not held.
	deliver func(channel string, payload []byte)
	// brokerLost is called when the Pub/Sub connection has been down for
	// longer than grace.
	brokerLost func()
	grace      time.Duration
	// relinked receives a signal when a channel is subscribed again after
	// the connection to Redis was lost and restored.
	relinked chan struct{}

	mu       sync.Mutex
	channels map[string]*channelEntry
	streams  map[*stream]struct{}
}

// channelEntry is the hub's record of one subscribed channel.
type channelEntry struct {
	streams map[*stream]struct{}
	ready   chan struct{} // closed when Redis confirmed the subscription
	once    sync.Once
}

func (e *channelEntry) markReady() (first bool) {
	e.once.Do(func() { close(e.ready); first = true })
	return first
}

func newHub(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger, grace time.Duration,
	deliver func(string, []byte), brokerLost func()) *hub {
	return &hub{
		ps:         rdb.Subscribe(ctx),
		log:        log,
		deliver:    deliver,
		brokerLost: brokerLost,
		grace:      grace,
		relinked:   make(chan struct{}, 1),
		channels:   make(map[string]*channelEntry),
		streams:    make(map[*stream]struct{}),
	}
}

// errSubscribe is returned when Redis did not confirm a subscription.
var errSubscribe = errors.New("sseedge: redis did not confirm the subscription")

// join adds st to the channels it reads, subscribing to those that are new,
// and waits until Redis has confirmed every subscription, so that every
// event published after join returns reaches st.
func (h *hub) join(ctx context.Context, st *stream) error {
	h.mu.Lock()
	var fresh []string
	waits := make([]chan struct{}, 0, len(st.channels))
	for _, ch := range st.channels {
		e, ok := h.channels[ch]
		if !ok {
			e = &channelEntry{streams: make(map[*stream]struct{}), ready: make(chan struct{})}
			h.channels[ch] = e
			fresh = append(fresh, ch)
		}
		e.streams[st] = struct{}{}
		waits = append(waits, e.ready)
	}
	h.streams[st] = struct{}{}
	var err error
	if len(fresh) > 0 {
		err = h.ps.Subscribe(ctx, fresh...)
	}
	h.mu.Unlock()
	if err != nil {
		h.leave(context.WithoutCancel(ctx), st)
		return errors.Join(errSubscribe, err)
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			h.leave(context.WithoutCancel(ctx), st)
			return errors.Join(errSubscribe, ctx.Err())
		}
	}
	return nil
}

// leave removes st, unsubscribing from the channels no stream reads any more.
func (h *hub) leave(ctx context.Context, st *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.streams[st]; !ok {
		return
	}
	delete(h.streams, st)
	var gone []string
	for _, ch := range st.channels {
		e, ok := h.channels[ch]
		if !ok {
			continue
		}
		delete(e.streams, st)
		if len(e.streams) == 0 {
			delete(h.channels, ch)
			gone = append(gone, ch)
		}
	}
	if len(gone) == 0 {
		return
	}
	// Best effort: if the connection is broken, go-redis resubscribes only
	// to the channels still wanted.
	if err := h.ps.Unsubscribe(ctx, gone...); err != nil {
		h.log.Debug("unsubscribe failed", slog.Any("err", err))
	}
}

// readers returns a snapshot of the streams that read channel.
func (h *hub) readers(channel string) []*stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.channels[channel]
	if !ok {
		return nil
	}
	out := make([]*stream, 0, len(e.streams))
	for st := range e.streams {
		out = append(out, st)
	}
	return out
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

// pingEvery is how long the receive loop waits for a message before it pings
// Redis, so that a dead connection is found and replaced.
const pingEvery = 2 * time.Second

// run reads the Pub/Sub connection until ctx is done. go-redis reconnects a
// broken connection and resubscribes to every channel on it; when that
// happens, the streams of each resubscribed channel are told to catch up
// from history.
func (h *hub) run(ctx context.Context) error {
	defer h.ps.Close()
	var downSince time.Time
	for ctx.Err() == nil {
		msg, err := h.ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				if err := h.ps.Ping(ctx); err == nil {
					continue
				}
			}
			if downSince.IsZero() {
				downSince = time.Now()
				h.log.Warn("redis pub/sub connection lost; reconnecting", slog.Any("err", err))
			} else if h.grace > 0 && time.Since(downSince) > h.grace {
				h.brokerLost()
				downSince = time.Now()
			}
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		if !downSince.IsZero() {
			h.log.Info("redis pub/sub connection restored", slog.Duration("down", time.Since(downSince)))
			downSince = time.Time{}
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			h.mu.Lock()
			e, ok := h.channels[m.Channel]
			var again []*stream
			if ok && !e.markReady() {
				// A confirmation for a channel that was ready: go-redis
				// resubscribed after a reconnect. Messages published in
				// between are in history.
				for st := range e.streams {
					again = append(again, st)
				}
			}
			h.mu.Unlock()
			for _, st := range again {
				st.signalResync()
			}
			if len(again) > 0 {
				select {
				case h.relinked <- struct{}{}:
				default:
				}
			}
		case *redis.Message:
			h.deliver(m.Channel, []byte(m.Payload))
		}
	}
	return nil
}
