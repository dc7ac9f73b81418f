package sseedge

import (
	"context"
	"sync"
	"time"
)

// held is the set of streams served on their handler goroutines (HTTP/2,
// HTTP/1.0, and connections the writers cannot take over), for one ticker
// to find those due a heartbeat and those whose token has expired, as the
// writers' ticker does for the streams taken over. A quiet stream then holds
// no timer of its own, and its goroutine waits on two channels in a small
// frame (see Server.hold), which lets its stack shrink to 4 KiB.
type held struct {
	s  *Server
	mu sync.Mutex
	// streams are the streams held (a map, so that a stream needs no
	// field of its own to leave it: see the size test of stream).
	streams map[*stream]struct{}
	// epoch is when the set was made: a held stream's lastWrite counts from
	// it, on the monotonic clock (see clock).
	epoch time.Time
}

func newHeld(s *Server) *held {
	return &held{s: s, streams: make(map[*stream]struct{}), epoch: time.Now()}
}

// clock is the time since the set was made, in nanoseconds.
func (h *held) clock() int64 { return int64(time.Since(h.epoch)) }

// add puts st in the set, as written to now.
func (h *held) add(st *stream) {
	st.mu.Lock()
	st.lastWrite = h.clock()
	st.mu.Unlock()
	h.mu.Lock()
	h.streams[st] = struct{}{}
	h.mu.Unlock()
}

// remove takes st out of the set.
func (h *held) remove(st *stream) {
	h.mu.Lock()
	delete(h.streams, st)
	h.mu.Unlock()
}

// wrote records that st's client was just written to.
func (h *held) wrote(st *stream) {
	now := h.clock()
	st.mu.Lock()
	st.lastWrite = now
	st.mu.Unlock()
}

// run marks the streams due a heartbeat, and closes those whose token has
// expired, until ctx is done. A heartbeat comes between Heartbeat and
// Heartbeat plus a tick after the last write.
func (h *held) run(ctx context.Context) {
	sweep(ctx, h.s, h.clock, func(now, clock int64, due, expired []*stream) ([]*stream, []*stream) {
		h.mu.Lock()
		defer h.mu.Unlock()
		for st := range h.streams {
			st.mu.Lock()
			switch {
			case st.reason != "":
				// Ending: its goroutine is on its way out.
			case clock >= st.expires:
				expired = append(expired, st)
			case !st.heartbeat && time.Duration(now-st.lastWrite) >= h.s.cfg.Heartbeat:
				due = append(due, st)
			}
			st.mu.Unlock()
		}
		return due, expired
	}, func(st *stream) {
		st.mu.Lock()
		st.heartbeat = true
		st.notifyLocked()
	})
}

// sweep is the heartbeat tickers' loop: every quarter of the heartbeat
// (10 ms to 1 s) until ctx is done, scan appends the streams due a
// heartbeat and those whose token has expired, given now by clock and the
// edge's time in ns (tokens expire by the edge's clock; heartbeats go by
// the real one); sweep closes the expired and hands the due to beat.
func sweep(ctx context.Context, s *Server, clock func() int64,
	scan func(now, wall int64, due, expired []*stream) ([]*stream, []*stream), beat func(*stream)) {
	every := min(max(s.cfg.Heartbeat/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	var due, expired []*stream
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due, expired = scan(clock(), s.now().UnixNano(), due[:0], expired[:0])
		for _, st := range expired {
			st.close(CloseTokenExpired)
		}
		for _, st := range due {
			beat(st)
		}
		clear(due)
		clear(expired)
	}
}
