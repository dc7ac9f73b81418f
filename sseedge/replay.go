package sseedge

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	mathrand "math/rand/v2"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
)

// A stream catches up from history (when it opens with a Last-Event-ID, and
// when the Redis link comes back) a page at a time, so that a replay lives
// within the stream's live budget: the edge holds at most QueueSize events
// read from history, and at most QueueSize × replayEventBytes of them past
// one event per stream, and reads the next page only once the previous one
// is written to the client (a full socket holds the writer back).
//
// The invariant that keeps the events in id order across the user's stream
// and its topics, with no loss and no duplicate: an event is written only
// when every stream whose page is used up, and that has more in history,
// has its page ending at or past the event's id. What is read and not yet
// written waits in heads; a stream's position moves only with what is
// written (or, for a reset, to its newest event, announced by herald.reset).

// replayEventBytes is the size of event a page is sized for: a page holds
// QueueSize events of this size (1 MiB with the default 64), or one event
// per stream if they are larger.
const replayEventBytes = 16 << 10

// replay is a stream's catch-up in progress. It belongs to the stream's
// writer.
type replay struct {
	heads [][]*outEvent // per stream: events read and not written yet, oldest first
	more  []bool        // per stream: history holds events past end
	end   []uint64      // per stream: where its last read ended
	reset []string      // streams whose events were lost, not announced yet
	// counted says the replay was counted in history_replays_total.
	counted bool
}

func newReplay(pos []uint64) *replay {
	rp := &replay{
		heads: make([][]*outEvent, len(pos)),
		more:  make([]bool, len(pos)),
		end:   append([]uint64(nil), pos...),
	}
	for i := range rp.more {
		rp.more[i] = true
	}
	return rp
}

// held is the number of events read and not written.
func (rp *replay) held() int {
	n := 0
	for _, h := range rp.heads {
		n += len(h)
	}
	return n
}

// done reports whether the catch-up has nothing more to write.
func (rp *replay) done() bool {
	for i, h := range rp.heads {
		if len(h) > 0 || rp.more[i] {
			return false
		}
	}
	return len(rp.reset) == 0
}

// pageBytes is the most envelope bytes a stream's page holds past one event
// per stream.
func (s *Server) pageBytes() int { return s.cfg.QueueSize * replayEventBytes }

// fill reads the next page of each stream of st whose page is used up and
// that has more in history, in one pipeline.
func (s *Server) fill(ctx context.Context, st *stream) error {
	rp := st.replay
	var idx []int
	for i, h := range rp.heads {
		if len(h) == 0 && rp.more[i] {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	held, heldBytes := rp.held(), st.replayBytes
	page := history.Page{
		Events: max(1, (s.cfg.QueueSize-held)/len(idx)),
		Bytes:  max(1, (s.pageBytes()-heldBytes)/len(idx)),
	}
	streams := make([]delivery.Stream, len(idx))
	after := make([]*uint64, len(idx))
	for j, i := range idx {
		streams[j] = st.streams[i]
		after[j] = &rp.end[i]
	}
	res, err := s.history.SincePage(ctx, streams, after, page)
	if err != nil {
		return err
	}
	n := 0
	for j, i := range idx {
		r := res[j]
		if r.Reset {
			rp.reset = append(rp.reset, st.label(i))
			st.pos[i], rp.end[i], rp.more[i] = r.Position, r.Position, false
			continue
		}
		for _, payload := range r.Events {
			if ev := s.decode(st.channels[i], payload); ev != nil {
				rp.heads[i] = append(rp.heads[i], ev)
				n += len(ev.body)
			}
		}
		rp.end[i], rp.more[i] = r.Position, r.More
	}
	st.replayBytes += n
	st.charge(int64(n))
	return nil
}

// appendPage appends what st's catch-up can write from what it holds: a
// herald.reset event first if a stream lost events, then the events in id
// order up to where a stream must be read again. It reads nothing.
func (s *Server) appendPage(b []byte, st *stream) []byte {
	rp := st.replay
	if len(rp.reset) > 0 {
		s.metrics.replays.WithLabelValues("reset").Inc()
		data, _ := json.Marshal(map[string]any{"reason": "history_gap", "streams": rp.reset})
		b = appendBody(st.appendID(b), ResetEvent, string(data))
		rp.reset = nil
	}
	// Nothing past the end of a used-up page with more behind it.
	bound := uint64(math.MaxUint64)
	for i, h := range rp.heads {
		if len(h) == 0 && rp.more[i] {
			bound = min(bound, rp.end[i])
		}
	}
	written, size := 0, 0
	for {
		k := -1
		for i, h := range rp.heads {
			if len(h) > 0 && h[0].eventID <= bound && (k < 0 || h[0].eventID < rp.heads[k][0].eventID) {
				k = i
			}
		}
		if k < 0 {
			break
		}
		ev := rp.heads[k][0]
		rp.heads[k][0] = nil
		rp.heads[k] = rp.heads[k][1:]
		size += len(ev.body)
		if next, ok := st.appendLive(b, ev); ok {
			b = next
			written++
		}
		if len(rp.heads[k]) == 0 && rp.more[k] {
			bound = min(bound, rp.end[k])
		}
	}
	for i, h := range rp.heads {
		if len(h) == 0 {
			// Whatever was read was written, or dropped (expired).
			st.pos[i] = max(st.pos[i], rp.end[i])
			rp.heads[i] = nil
		}
	}
	// The page's bytes stay counted until it is written (pageWritten).
	st.replayBytes -= size
	st.pageBytes += size
	if written > 0 {
		if !rp.counted {
			rp.counted = true
			s.metrics.replays.WithLabelValues("replayed").Inc()
		}
		s.metrics.replayed.Add(float64(written))
	}
	return b
}

// appendFirstPage appends the first page of the catch-up that open read,
// and leaves the rest to the stream's writer. With nothing to replay it
// appends the cursor alone, so that the client's Last-Event-ID is right
// from the start.
func (s *Server) appendFirstPage(b []byte, st *stream) []byte {
	n := len(b)
	b = s.appendPage(b, st)
	if st.replay.done() {
		st.replay = nil
		if len(b) == n {
			b = append(st.appendID(b), '\n')
		}
		return b
	}
	st.owe()
	return b
}

// catchUp appends the next page of st's catch-up from history, reading it
// (retrying while Redis fails, up to BrokerGrace), or says why the stream
// must end. A catch-up begins when the Redis link comes back (and again if
// it comes back during one), from the client's positions; while it lasts,
// the stream owes its writer another page, which comes before live events.
func (s *Server) catchUp(ctx context.Context, b []byte, st *stream) ([]byte, CloseReason) {
	if st.takeRelinked() || st.replay == nil {
		s.dropReplay(st)
		st.replay = newReplay(st.pos)
	}
	n := len(b)
	for {
		if reason := s.fillRetrying(ctx, st); reason != "" {
			return b, reason
		}
		b = s.appendPage(b, st)
		if st.replay.done() {
			st.replay = nil
			if len(b) == n {
				b = append(st.appendID(b), '\n')
			}
			return b, ""
		}
		if len(b) > n {
			st.owe()
			return b, ""
		}
		// Everything read was dropped (expired): read on.
	}
}

// dropReplay lets go of what st's catch-up holds.
func (s *Server) dropReplay(st *stream) {
	if st.replay == nil {
		return
	}
	st.charge(-int64(st.replayBytes))
	st.replayBytes = 0
	st.replay = nil
}

// pageWritten is told that the page catchUp or appendFirstPage appended was
// written: its bytes are no longer held.
func (s *Server) pageWritten(st *stream) {
	if st.pageBytes > 0 {
		st.charge(-int64(st.pageBytes))
		st.pageBytes = 0
	}
}

// Backoff of the catch-up's reads while Redis fails: doubling from
// catchUpRetryMin up to catchUpRetryMax, each wait jittered by up to half,
// so that the streams of an edge do not retry in step.
const (
	catchUpRetryMin = 100 * time.Millisecond
	catchUpRetryMax = 3 * time.Second
)

// fillRetrying is fill, retried with backoff while it fails, until
// BrokerGrace has passed since the first failure: then the stream ends as
// broker_lost. Each failure is logged and counted. Right after the Redis
// link comes back, Redis may still be loading its data, or the client's
// pooled connections may be to the server that went away.
func (s *Server) fillRetrying(ctx context.Context, st *stream) CloseReason {
	var first time.Time
	wait := catchUpRetryMin
	for attempt := 1; ; attempt++ {
		err := s.fill(ctx, st)
		if err == nil {
			if attempt > 1 {
				s.log.Info("catch-up from history recovered", slog.String("conn", st.conn.ID), slog.Int("attempts", attempt))
			}
			return ""
		}
		if ctx.Err() != nil {
			return CloseClientClosed
		}
		s.metrics.catchUpErrors.Inc()
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		left := s.cfg.BrokerGrace - now.Sub(first)
		if left <= 0 {
			s.log.Error("catch-up from history failed for longer than the broker grace; closing the stream",
				slog.String("conn", st.conn.ID), slog.Int("attempts", attempt), slog.Duration("grace", s.cfg.BrokerGrace), slog.Any("err", err))
			return CloseBrokerLost
		}
		d := min(wait/2+time.Duration(mathrand.Int64N(int64(wait/2)+1)), left)
		s.log.Warn("catch-up from history failed; retrying", slog.String("conn", st.conn.ID),
			slog.Int("attempt", attempt), slog.Duration("retry_in", d), slog.Any("err", err))
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-st.ended():
			t.Stop()
			return st.closed()
		case <-ctx.Done():
			t.Stop()
			return CloseClientClosed
		}
		wait = min(2*wait, catchUpRetryMax)
	}
}
