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
// hands an HTTP/1.1 stream over to the writers, and reports adopted; it
// serves any other (HTTP/2) itself, as the only writer of w, until the
// stream ends, and says why.
func (s *Server) serveStream(ctx context.Context, w http.ResponseWriter, r *http.Request, st *stream) (_ CloseReason, adopted bool) {
	rc := http.NewResponseController(w)
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

	write := func(b []byte) CloseReason {
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
			return ""
		case errors.Is(err, os.ErrDeadlineExceeded):
			return CloseWriteTimeout
		case ctx.Err() != nil:
			return CloseClientClosed
		default:
			return CloseWriteError
		}
	}
	buf := appendRetry(nil, s.cfg.Retry)
	buf = appendComment(buf, "connected "+st.conn.ID)
	buf = s.appendFirstPage(buf, st)
	if reason := write(buf); reason != "" {
		return reason, false
	}
	s.pageWritten(st)
	if s.draining.Load() {
		// The drain began while this stream was opening.
		return s.closeDrained(write), false
	}
	if takeOver {
		// What the client sent after its request (nothing, from an SSE
		// client) is dropped with the buffers Hijack returns.
		nc, _, err := rc.Hijack()
		if err == nil {
			if !s.writers.adopt(st, nc) {
				// Never for a TCP connection; the client reconnects.
				_ = nc.Close()
				return CloseWriteError, false
			}
			return "", true
		}
	}

	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	expiry := time.NewTimer(time.Unix(0, st.expires).Sub(s.now()))
	defer expiry.Stop()
	var batch []*outEvent
	for {
		select {
		case <-ctx.Done():
			return CloseClientClosed, false
		case <-expiry.C:
			return CloseTokenExpired, false
		case <-heartbeat.C:
			if reason := write(appendComment(buf[:0], "hb")); reason != "" {
				return reason, false
			}
		case <-st.wake:
			var (
				resync bool
				reason CloseReason
			)
			batch, resync, _, reason, _ = st.take(batch[:0])
			switch {
			case reason == CloseServerDrain:
				return s.closeDrained(write), false
			case reason == CloseReplaced:
				return s.closeReplaced(write), false
			case reason != "":
				return reason, false
			case resync:
				// The next page of a catch-up from history: of what the
				// client missed, or of what was published while the Redis
				// link was down.
				if buf, reason = s.catchUp(ctx, buf[:0], st); reason != "" {
					return reason, false
				}
				if len(buf) > 0 {
					if reason := write(buf); reason != "" {
						return reason, false
					}
				}
				s.pageWritten(st)
				continue
			}
			var written []*outEvent
			if buf, written = s.appendEvents(buf[:0], st, batch); len(written) == 0 {
				continue
			}
			if reason := write(buf); reason != "" {
				return reason, false
			}
			s.delivered(ctx, st, written)
			heartbeat.Reset(s.cfg.Heartbeat)
		}
	}
}

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
