package sseedge

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
)

// budget counts the bytes of event data the edge holds for all its
// streams: events queued for a slow client, and the pages of catch-ups from
// history. Past its limit the edge closes the heaviest streams, as
// slow_consumer, until it is within it again: a crowd of slow clients costs
// them their streams, not the edge its memory.
type budget struct {
	limit int64
	used  atomic.Int64
	// over is signalled when used goes past limit.
	over chan struct{}
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit, over: make(chan struct{}, 1)}
}

// add counts n more bytes held (fewer, if negative). A nil budget counts
// nothing.
func (b *budget) add(n int64) {
	if b == nil || n == 0 {
		return
	}
	if b.used.Add(n) > b.limit && n > 0 {
		select {
		case b.over <- struct{}{}:
		default:
		}
	}
}

// enforceBudget closes the heaviest streams whenever the edge holds more
// than its budget, until ctx is done.
func (s *Server) enforceBudget(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.budget.over:
			s.shed()
		}
	}
}

// shed closes the streams that hold the most, heaviest first, until the
// edge is within its budget. Closing a stream gives back what it holds at
// once; the memory goes with its blocked write, which is cut short on a
// taken-over (HTTP/1.1) stream, and ends within WriteTimeout otherwise.
func (s *Server) shed() {
	type weighed struct {
		st *stream
		n  int64
	}
	var all []weighed
	for _, st := range s.hub.all() {
		if n := st.weight(); n > 0 {
			all = append(all, weighed{st, n})
		}
	}
	slices.SortFunc(all, func(a, b weighed) int { return cmp.Compare(b.n, a.n) })
	for _, w := range all {
		if s.budget.used.Load() <= s.budget.limit {
			return
		}
		// Counted before the stream's client can see it closed.
		if w.st.closeThen(CloseSlowConsumer, s.metrics.budgetCloses.Inc) {
			w.st.cut()
			s.log.Warn("edge over its queued bytes budget; closing the heaviest stream",
				slog.String("conn", w.st.conn.ID), slog.Int64("held_bytes", w.n), slog.Int64("budget_bytes", s.budget.limit))
		}
	}
}
