package sseedge

import (
	"context"
	"log/slog"
)

// The syncer is the one goroutine that asks Redis for the hub's
// subscriptions. Joins and leaves change only the hub's membership, under
// its lock, and mark the channels they touched (hub.todo); the syncer then
// compares what each channel wants with what it has asked for, and sends
// the difference, in order, with the lock not held. So a slow Redis delays
// the joins that wait for their subscriptions, never a delivery.
//
// A channel is in one of these states:
//
//   - wanted, not asked for (!sent): the syncer sends SUBSCRIBE;
//   - asked for, unconfirmed: joins wait for the confirmation;
//   - asked for, confirmed (ready): joins go straight on;
//   - left by every stream: once confirmed, the syncer removes the entry
//     and sends UNSUBSCRIBE; a stream that joins later makes a new entry,
//     whose SUBSCRIBE the same goroutine sends after that UNSUBSCRIBE.
//
// A channel left before its subscription is confirmed waits for the
// confirmation before it is unsubscribed, so that each confirmation the
// hub sees answers the one subscription it has asked for: a join never
// takes the confirmation of an earlier subscription, since undone, for its
// own.

// sync sends the hub's subscriptions to Redis until ctx is done.
func (h *hub) sync(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.dirty:
		}
		sub, unsub := h.changes()
		if len(unsub) > 0 {
			cctx, cancel := context.WithTimeout(ctx, h.timeout)
			// Best effort: if the connection is broken, the subscriber
			// resubscribes only to the channels still wanted.
			if err := h.ps.unsubscribe(cctx, unsub...); err != nil && ctx.Err() == nil {
				h.log.Debug("unsubscribe failed", slog.Int("channels", len(unsub)), slog.Any("err", err))
			}
			cancel()
		}
		if len(sub) > 0 {
			cctx, cancel := context.WithTimeout(ctx, h.timeout)
			if err := h.ps.subscribe(cctx, sub...); err != nil && ctx.Err() == nil {
				h.log.Warn("subscribe failed", slog.Int("channels", len(sub)), slog.Any("err", err))
				h.failed(sub, err)
			}
			cancel()
		}
	}
}

// changes returns the channels to subscribe to and those to unsubscribe
// from, and records them as done.
func (h *hub) changes() (sub, unsub []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.todo {
		e, ok := h.channels[ch]
		switch {
		case !ok:
		case len(e.streams) > 0 && !e.sent:
			e.sent = true
			sub = append(sub, ch)
		case len(e.streams) > 0:
			// Joined again while waiting: it stays.
		case !e.sent:
			// Left before it was asked for.
			delete(h.channels, ch)
		case e.isReady():
			delete(h.channels, ch)
			unsub = append(unsub, ch)
		default:
			// Left while its subscription is on the way: confirmed
			// hands it back.
		}
		delete(h.todo, ch)
	}
	return sub, unsub
}

// failed tells the joins waiting for channels that their subscription
// could not be sent. The subscriber still holds the channels, and confirms
// them if its connection comes back: later joins wait for that.
func (h *hub) failed(channels []string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range channels {
		e, ok := h.channels[ch]
		if !ok || e.isReady() {
			continue
		}
		e.fail.err = err
		close(e.fail.done)
		e.fail = &failure{done: make(chan struct{})}
	}
}
