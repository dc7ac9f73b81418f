package sseedge

import (
	"context"
	"log/slog"
	"time"

	"github.com/herald-push/herald/presence"
)

// renewLoop renews the leases of every local stream until ctx is done, and
// at once when the Redis link comes back (a restarted Redis may have lost
// them, or they expired during the outage). A renewal that fails after a
// relink is tried again with backoff rather than at the next tick: until it
// succeeds, the router counts this edge's users as offline and pushes.
func (s *Server) renewLoop(ctx context.Context, h *hub) {
	t := time.NewTicker(s.presence.RenewInterval())
	defer t.Stop()
	retry := time.NewTimer(0)
	if !retry.Stop() {
		<-retry.C
	}
	defer retry.Stop()
	var backoff time.Duration
	for {
		relinked := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.relinked:
			relinked, backoff = true, 0
		case <-retry.C:
			relinked = true
		}
		if err := s.renewAll(ctx, h); err != nil && relinked && ctx.Err() == nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), s.presence.RenewInterval())
			retry.Reset(backoff)
		}
	}
}

// renewAll renews the leases of every local stream, in batches, and returns
// the last error.
func (s *Server) renewAll(ctx context.Context, h *hub) error {
	var last error
	streams := h.all()
	const batch = 500
	for len(streams) > 0 {
		n := min(batch, len(streams))
		conns := make([]presence.Conn, n)
		for i, st := range streams[:n] {
			conns[i] = st.conn
		}
		streams = streams[n:]
		if err := s.presence.Lease(ctx, conns...); err != nil && ctx.Err() == nil {
			s.metrics.presenceErrors.Inc()
			s.log.Warn("presence renewal failed", slog.Any("err", err))
			last = err
		}
	}
	return last
}
