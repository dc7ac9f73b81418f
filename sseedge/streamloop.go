package sseedge

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"time"
)

// serveStream writes the response headers and st's first bytes to w. It then
// hands an HTTP/1.1 stream over to the writers, and reports adopted; any
// other (HTTP/2) is left to the caller to hold (see hold), with no reason.
// A non-empty reason says why the stream ended.
func (s *Server) serveStream(ctx context.Context, w http.ResponseWriter, r *http.Request, st *stream) (_ CloseReason, adopted bool) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	// An HTTP/1.1 response is chunked, which the writers go on with; an
	// HTTP/1.0 one is not, and stays with this goroutine, like HTTP/2.
	takeOver := s.writers != nil && r.ProtoMajor == 1 && r.ProtoMinor >= 1
	if takeOver {
		// The writers close the connection when the stream ends.
		h.Set("Connection", "close")
	}
	w.WriteHeader(http.StatusOK)

	write := s.writeFunc(ctx, w, st, nil)
	buf := appendRetry(nil, s.cfg.Retry)
	buf = appendComment(buf, "connected "+st.conn.ID)
	buf = s.appendFirstPage(buf, st)
	if reason := write(buf); reason != "" {
		return reason, false
	}
	s.pageWritten(st)
	if s.draining.Load() {
		// The drain began while this stream was opening: its caller
		// counts it, then ends it (closeDrained).
		return CloseServerDrain, false
	}
	if takeOver {
		// What the client sent after its request (nothing, from an SSE
		// client) is dropped with the buffers Hijack returns.
		nc, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			// The connection keeps its place in the TCP connection
			// counts until its socket is closed.
			place := s.conns.take(nc)
			if !s.writers.adopt(st, nc, place) {
				// Never for a TCP connection; the client reconnects.
				_ = nc.Close()
				s.conns.release(place)
				return CloseWriteError, false
			}
			return "", true
		}
	}
	return "", false
}

// writeFunc returns a function that writes b to w and flushes it, within
// WriteTimeout, and says why the stream must end if that failed. Each
// successful write to st is recorded in held, unless it is nil.
func (s *Server) writeFunc(ctx context.Context, w http.ResponseWriter, st *stream, held *held) func(b []byte) CloseReason {
	rc := http.NewResponseController(w)
	return func(b []byte) CloseReason {
		// Deadlines go by the real clock, not the edge's.
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, err := w.Write(b)
		if err == nil {
			err = rc.Flush()
		}
		switch {
		case err == nil:
			// Clear the deadline: on HTTP/2, net/http resets the stream
			// when a write deadline passes, whether or not a write is
			// waiting, so a stream quiet for WriteTimeout (less than
			// the heartbeat by default) would be reset.
			_ = rc.SetWriteDeadline(time.Time{})
			if held != nil {
				held.wrote(st)
			}
			return ""
		case errors.Is(err, os.ErrDeadlineExceeded):
			return CloseWriteTimeout
		case ctx.Err() != nil:
			return CloseClientClosed
		default:
			return CloseWriteError
		}
	}
}

// hold serves st on this goroutine, as the only writer of w, until the
// stream ends, and says why. While the stream is quiet the goroutine waits
// on one channel, in a small frame, so that the garbage collector can
// shrink its stack to 4 KiB: it does so only while the frames in use, with
// net/http's above handleEvents, stay under about 1.2 KiB (heraldbench
// -idle-h2 reports the stacks per stream). The client's going away closes
// the stream, its heartbeat and its token's expiry come from the held
// set's one ticker, and its turns (turn) take their buffers from a pool.
func (s *Server) hold(ctx context.Context, w http.ResponseWriter, st *stream) CloseReason {
	defer s.watch(ctx, st)()
	for {
		<-st.wake
		if reason := s.turn(ctx, w, st); reason != "" {
			return reason
		}
	}
}

// watch puts st in the held set, and has the client's going away (the end
// of ctx) close it, until the function it returns is called.
func (s *Server) watch(ctx context.Context, st *stream) (unwatch func()) {
	s.held.add(st)
	stop := context.AfterFunc(ctx, func() { st.close(CloseClientClosed) })
	return func() {
		stop()
		s.held.remove(st)
	}
}

// turnBuffers are the buffers of a held stream's turn.
type turnBuffers struct {
	buf   []byte
	batch []*outEvent
}

// turn does what woke a held stream: ends it (and says why), writes a page
// of its catch-up from history, its queued events or a heartbeat.
func (s *Server) turn(ctx context.Context, w http.ResponseWriter, st *stream) CloseReason {
	tb, _ := s.turnBufs.Get().(*turnBuffers)
	if tb == nil {
		tb = new(turnBuffers)
	}
	defer func() {
		clear(tb.batch)
		if cap(tb.buf) > maxTurnBuffer {
			// A burst or a catch-up page: not kept for the quiet.
			tb.buf = nil
		}
		s.turnBufs.Put(tb)
	}()
	write := s.writeFunc(ctx, w, st, s.held)
	batch, resync, heartbeat, reason, ok := st.take(tb.batch[:0])
	tb.batch = batch
	switch {
	case reason != "":
		// A drained or replaced stream's last words are written by
		// handleEvents, once it is counted.
		return reason
	case resync:
		// The next page of a catch-up from history: of what the client
		// missed, or of what was published while the Redis link was down.
		tb.buf, reason = s.catchUp(ctx, tb.buf[:0], st)
		if reason != "" {
			return reason
		}
		if len(tb.buf) > 0 {
			if reason := write(tb.buf); reason != "" {
				return reason
			}
		}
		s.pageWritten(st)
		return ""
	case !ok:
		return ""
	}
	var written []*outEvent
	tb.buf, written = s.appendEvents(tb.buf[:0], st, batch)
	switch {
	case len(written) > 0:
	case heartbeat:
		tb.buf = appendComment(tb.buf, "hb")
	default:
		return ""
	}
	if reason := write(tb.buf); reason != "" {
		return reason
	}
	s.delivered(ctx, st, written)
	return ""
}

// maxTurnBuffer is the largest write buffer a held stream's turn gives
// back to the pool.
const maxTurnBuffer = 16 << 10

// appendEvents appends the events of batch that the client does not have
// yet, and returns them too (in batch's array).
func (s *Server) appendEvents(b []byte, st *stream, batch []*outEvent) ([]byte, []*outEvent) {
	written := batch[:0]
	for _, ev := range batch {
		if next, ok := st.appendLive(b, ev); ok {
			b = next
			written = append(written, ev)
		}
	}
	return b, written
}

// delivered counts and traces the events just written to st.
func (s *Server) delivered(ctx context.Context, st *stream, written []*outEvent) {
	if len(written) == 0 {
		return
	}
	now := s.now()
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	for _, ev := range written {
		s.metrics.latency.Observe(now.Sub(ev.accepted).Seconds())
		if ev.traced && ev.user != "" && s.trail != nil {
			s.trail.add(ev.user, ev.id, now)
		}
		if ev.trace != nil {
			s.traceWrite(ctx, st, ev, now)
		}
		if debug {
			s.log.LogAttrs(ctx, slog.LevelDebug, "delivered", slog.String("notification_id", ev.id),
				slog.String("route", "online"), slog.String("conn", st.conn.ID), s.cfg.UserIDs.Attr(st.user),
				slog.String("correlation_id", ev.correlation), slog.Duration("latency", now.Sub(ev.accepted)))
		}
	}
	s.metrics.written.Add(float64(len(written)))
}
