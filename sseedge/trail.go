package sseedge

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	trails "github.com/herald-push/herald/delivery/trail"
)

// trail records SSE writes in notifications' trails (delivery.TraceKey),
// off the write path: writes are counted per notification and flushed in
// one pipeline every trailFlush. When Redis falls behind, counts are dropped
// rather than held: the trail is for people, the delivery is what matters.
type trail struct {
	rdb    redis.UniversalClient
	prefix string

	// queue holds the writes and marks since the last tick, at most
	// trailQueue. It is a locked slice, not a channel, so that a write
	// wakes no goroutine: at a low rate, a wake-up per event cost more than
	// the rest of the trail's work.
	mu    sync.Mutex
	queue []trailWrite
}

type trailWrite struct {
	user, id string
	at       time.Time
	field    string // set for a mark: the field to set to at; empty for a write
}

const (
	trailFlush = 50 * time.Millisecond
	trailQueue = 8192
)

// trailScript adds n writes at ms to a trail that exists. It is sent by
// its SHA, and by its source when Redis does not know it (see flush), once
// each (delivery.OnceScript): a second run would count the writes twice.
var trailScript = delivery.NewOnceScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'sse_writes', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'sse_first_ms', ARGV[2])
end
return 0`)

func newTrail(rdb redis.UniversalClient, prefix string) *trail {
	return &trail{rdb: rdb, prefix: prefix}
}

// add records one write of notification id to a connection of user.
func (t *trail) add(user, id string, at time.Time) {
	t.put(trailWrite{user, id, at, ""})
}

// mark sets field of notification id's trail to at (in ms).
func (t *trail) mark(user, id, field string, at time.Time) {
	t.put(trailWrite{user, id, at, field})
}

// put queues w, or drops it when trailQueue are waiting.
func (t *trail) put(w trailWrite) {
	t.mu.Lock()
	if len(t.queue) < trailQueue {
		t.queue = append(t.queue, w)
	}
	t.mu.Unlock()
}

// take returns the queued writes and marks, and gives the queue spare as
// its next array.
func (t *trail) take(spare []trailWrite) []trailWrite {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.queue
	t.queue = spare[:0]
	return q
}

// run flushes until ctx is done.
func (t *trail) run(ctx context.Context) {
	tick := time.NewTicker(trailFlush)
	defer tick.Stop()
	pending := map[string]*trailCount{}
	var marks, queue []trailWrite
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			queue = t.take(queue)
			for _, w := range queue {
				if w.field != "" {
					marks = append(marks, w)
					continue
				}
				if a := pending[w.id]; a != nil {
					a.n++
				} else {
					pending[w.id] = &trailCount{user: w.user, n: 1, first: w.at}
				}
			}
			clear(queue)
			if cap(queue) > trailQueue/8 {
				queue = nil // after a burst: let its array go
			}
			if len(pending) == 0 && len(marks) == 0 {
				continue
			}
			fctx, cancel := context.WithTimeout(ctx, time.Second)
			t.flush(fctx, pending, marks)
			cancel()
			clear(pending)
			marks = marks[:0]
		}
	}
}

// trailCount is the writes of one notification since the last flush.
type trailCount struct {
	user  string
	n     int
	first time.Time
}

// flush sends the counts (by notification id) and the marks in one
// pipeline. A Redis that restarted, failed over or was flushed does not know
// trailScript: the counts it refused are sent again with the script's
// source (which caches it on the node that runs it), and only those, so
// that none is counted twice.
func (t *trail) flush(ctx context.Context, pending map[string]*trailCount, marks []trailWrite) {
	send := func(ids []string, marks []trailWrite, byHash bool) (refused []string) {
		cmds := make([]*redis.Cmd, len(ids))
		_, _ = t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				a := pending[id]
				cmds[i] = trailScript.Queue(ctx, p, byHash, []string{delivery.TraceKey(t.prefix, a.user, id)}, a.n, a.first.UnixMilli())
			}
			for _, m := range marks {
				trails.Add(ctx, p, t.prefix, m.user, m.id, m.field, m.at.UnixMilli())
			}
			return nil
		})
		for i, c := range cmds {
			if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
				refused = append(refused, ids[i])
			}
		}
		return refused
	}
	refused := send(slices.Collect(maps.Keys(pending)), marks, true)
	if len(refused) > 0 {
		send(refused, nil, false) // the marks went the first time
	}
}
