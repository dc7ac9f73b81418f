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
	every := min(max(h.s.cfg.Heartbeat/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	var due, expired []*stream
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Tokens expire by the edge's clock; heartbeats go by the real one.
		now, clock := h.clock(), h.s.now().UnixNano()
		due, expired = due[:0], expired[:0]
		h.mu.Lock()
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
		h.mu.Unlock()
		for _, st := range expired {
			st.close(CloseTokenExpired)
		}
		for _, st := range due {
			st.mu.Lock()
			st.heartbeat = true
			st.notifyLocked()
		}
		clear(due)
		clear(expired)
	}
}
