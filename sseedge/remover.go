package sseedge

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/herald-push/herald/presence"
)

// remover group-commits presence removals: a closing stream hands its lease
// over and waits for the result, and one goroutine removes whatever leases
// are waiting in a single pipelined call. One close costs one round trip as
// before; thousands of closes at once (a load balancer dropping its
// connections, a client fleet reconnecting) cost a few round trips instead
// of thousands of concurrent calls that would exhaust the Redis pool and
// leave their leases to expire after the TTL.
type remover struct {
	reg     *presence.Registry
	ch      chan removal
	stopped atomic.Bool // the batch loop has ended: remove directly
}

type removal struct {
	conn presence.Conn
	done chan error
}

// maxRemovalBatch bounds one pipelined call.
const maxRemovalBatch = 1000

func newRemover(reg *presence.Registry) *remover {
	return &remover{reg: reg, ch: make(chan removal, maxRemovalBatch)}
}

// remove removes c's lease, through the running batch loop when there is
// one, and returns its error.
func (r *remover) remove(ctx context.Context, c presence.Conn) error {
	if r.stopped.Load() {
		return r.reg.Remove(ctx, c)
	}
	done := make(chan error, 1)
	select {
	case r.ch <- removal{c, done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run removes batches until ctx is done, then serves what is still queued.
// A removal already under way outlives ctx: its stream is waiting for it.
func (r *remover) run(ctx context.Context) {
	batch := make([]removal, 0, maxRemovalBatch)
	conns := make([]presence.Conn, 0, maxRemovalBatch)
	for {
		var first removal
		select {
		case first = <-r.ch:
		case <-ctx.Done():
			// Streams closing after the edge stopped remove their leases
			// themselves; those already queued are served here.
			r.stopped.Store(true)
			for {
				select {
				case rm := <-r.ch:
					rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
					rm.done <- r.reg.Remove(rctx, rm.conn)
					cancel()
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	more:
		for len(batch) < maxRemovalBatch {
			select {
			case rm := <-r.ch:
				batch = append(batch, rm)
			default:
				break more
			}
		}
		conns = conns[:0]
		for _, rm := range batch {
			conns = append(conns, rm.conn)
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := r.reg.Remove(rctx, conns...)
		cancel()
		for _, rm := range batch {
			rm.done <- err
		}
	}
}
