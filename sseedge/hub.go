package sseedge

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
)

// hub multiplexes one Redis Pub/Sub connection over every local stream. It
// subscribes to a user's channel when the user's first stream arrives, and
// unsubscribes when the last one leaves.
type hub struct {
	ps     *redis.PubSub
	prefix string
	log    *slog.Logger
	// deliver is called for each message, with the hub's lock not held.
	deliver func(user string, payload []byte)

	mu    sync.Mutex
	users map[string]*userEntry
}

// userEntry is the hub's record of one user with local streams.
type userEntry struct {
	streams map[*stream]struct{}
	ready   chan struct{} // closed when Redis confirmed the subscription
	once    sync.Once
}

func (e *userEntry) markReady() { e.once.Do(func() { close(e.ready) }) }

func newHub(ctx context.Context, rdb redis.UniversalClient, prefix string, log *slog.Logger, deliver func(string, []byte)) *hub {
	return &hub{
		ps:      rdb.Subscribe(ctx),
		prefix:  prefix,
		log:     log,
		deliver: deliver,
		users:   make(map[string]*userEntry),
	}
}

// errSubscribe is returned when Redis did not confirm a subscription.
var errSubscribe = errors.New("sseedge: redis did not confirm the subscription")

// join adds st to its user's streams, subscribing to the user's channel if
// it is the first, and waits until Redis has confirmed the subscription, so
// that every notification published after join returns reaches st.
func (h *hub) join(ctx context.Context, st *stream) error {
	h.mu.Lock()
	e, ok := h.users[st.user]
	if !ok {
		e = &userEntry{streams: make(map[*stream]struct{}), ready: make(chan struct{})}
		h.users[st.user] = e
		if err := h.ps.Subscribe(ctx, delivery.Channel(h.prefix, st.user)); err != nil {
			delete(h.users, st.user)
			h.mu.Unlock()
			return errors.Join(errSubscribe, err)
		}
	}
	e.streams[st] = struct{}{}
	h.mu.Unlock()

	select {
	case <-e.ready:
		return nil
	case <-ctx.Done():
		h.leave(context.WithoutCancel(ctx), st)
		return errors.Join(errSubscribe, ctx.Err())
	}
}

// leave removes st, unsubscribing from the user's channel if it was the last.
func (h *hub) leave(ctx context.Context, st *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.users[st.user]
	if !ok {
		return
	}
	delete(e.streams, st)
	if len(e.streams) > 0 {
		return
	}
	delete(h.users, st.user)
	// Unsubscribing is best effort: if it fails, the connection is broken and
	// go-redis resubscribes only to the channels still wanted.
	if err := h.ps.Unsubscribe(ctx, delivery.Channel(h.prefix, st.user)); err != nil {
		h.log.Debug("unsubscribe failed", slog.Any("err", err))
	}
}

// streamsOf returns a snapshot of user's streams.
func (h *hub) streamsOf(user string) []*stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.users[user]
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
	var out []*stream
	for _, e := range h.users {
		for st := range e.streams {
			out = append(out, st)
		}
	}
	return out
}

// subscriptions is the number of user channels the hub is subscribed to.
func (h *hub) subscriptions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.users)
}

// pingEvery is how long the receive loop waits for a message before it pings
// Redis, so that a dead connection is found and replaced.
const pingEvery = 5 * time.Second

// run reads the Pub/Sub connection until ctx is done. go-redis reconnects a
// broken connection and resubscribes to every channel on it.
func (h *hub) run(ctx context.Context) error {
	defer h.ps.Close()
	for ctx.Err() == nil {
		msg, err := h.ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				if err := h.ps.Ping(ctx); err != nil {
					h.log.Warn("redis pub/sub ping failed", slog.Any("err", err))
				}
				continue
			}
			h.log.Warn("redis pub/sub receive failed; reconnecting", slog.Any("err", err))
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			user, ok := delivery.UserFromChannel(h.prefix, m.Channel)
			if !ok {
				continue
			}
			h.mu.Lock()
			if e, ok := h.users[user]; ok {
				e.markReady()
			}
			h.mu.Unlock()
		case *redis.Message:
			user, ok := delivery.UserFromChannel(h.prefix, m.Channel)
			if !ok {
				continue
			}
			h.deliver(user, []byte(m.Payload))
		}
	}
	return nil
}
