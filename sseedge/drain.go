package sseedge

import (
	"context"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"time"
)

// drain stops accepting streams and closes the open ones, spread over the
// drain period, then shuts the HTTP server down. Each stream's lease is
// removed as it closes, so notifications keep reaching the streams still
// open; a closed client reconnects (to another edge) and recovers what was
// published meanwhile from history.
func (s *Server) drain(ctx context.Context, hs *http.Server) {
	s.draining.Store(true)
	streams := s.hub.all()
	s.log.Info("draining", slog.Int("streams", len(streams)), slog.Duration("period", s.cfg.DrainPeriod))
	if n := len(streams); n > 0 {
		step := s.cfg.DrainPeriod / time.Duration(n)
		var tick <-chan time.Time
		if step > 0 {
			t := time.NewTicker(step)
			defer t.Stop()
			tick = t.C
		}
		for i, st := range streams {
			if i > 0 && tick != nil {
				select {
				case <-ctx.Done():
				case <-tick:
				}
			}
			st.close(CloseServerDrain)
		}
	}
	// Streams that were mid-handshake when the drain began see the draining
	// flag and close themselves; close any stragglers too.
	for _, st := range s.hub.all() {
		st.close(CloseServerDrain)
	}
	shutdownCtx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout+time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		s.log.Warn("http shutdown", slog.Any("err", err))
		_ = hs.Close()
	}
	s.handlers.Wait()
}

// closeDrained ends a drained stream with a jittered retry: field, so that
// the clients of a draining edge come back spread out.
func (s *Server) closeDrained(write func([]byte) CloseReason) {
	_ = write(appendRetry(nil, s.drainRetry()))
}

// drainRetry is the reconnection delay a drained client is given: Retry,
// plus up to twice Retry of jitter.
func (s *Server) drainRetry() time.Duration {
	return s.cfg.Retry + time.Duration(mathrand.Int64N(int64(2*s.cfg.Retry)+1))
}
