package delivery

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Notification is one notification of a batch: what Publish takes.
type Notification struct {
	Env            *heraldv1.Envelope
	IdempotencyKey string
}

// PublishBatch routes notifications as Publish routes each of them, and
// returns each one's result and error, in order. Their scripts go to Redis
// in one pipeline (on a Redis Cluster, one per node); those that reached no
// edge are then handed to the offline queue concurrently, and what the
// queue did is recorded in one more pipeline. One notification's failure
// does not fail the others. Two with the same user and idempotency key are
// one notification: the second gets the first's result, with Duplicate
// set, or the first's error.
func (p *Publisher) PublishBatch(ctx context.Context, ns []Notification) ([]Result, []error) {
	results, errs := make([]Result, len(ns)), make([]error, len(ns))
	calls := make([]*notifyCall, len(ns)) // nil: not run
	dupOf := map[int]int{}
	var first map[string]int
	var acks []int
	for i, n := range ns {
		if k := n.IdempotencyKey; k != "" {
			if first == nil {
				first = make(map[string]int)
			}
			id := n.Env.GetUserId() + "\x00" + k // user ids hold no control characters
			if j, ok := first[id]; ok {
				dupOf[i] = j
				continue
			}
			first[id] = i
		}
		c, err := p.prepare(ctx, n.Env, n.IdempotencyKey)
		if err != nil {
			errs[i] = err
			continue
		}
		calls[i] = c
		if n.Env.GetAckBy() != nil {
			acks = append(acks, i)
		}
	}
	if len(acks) > 0 {
		p.scheduleReceipts(ctx, acks, calls, errs)
	}
	run := make([]*notifyCall, 0, len(calls))
	for _, c := range calls {
		if c != nil {
			run = append(run, c)
		}
	}
	p.runScripts(ctx, run)

	var qs []*queued
	var qi []int
	var confirm []*heraldv1.Envelope
	for i, c := range calls {
		if c == nil {
			continue
		}
		r, queue, err := p.outcome(c)
		results[i], errs[i] = r, err
		if receiptCreated(c.env, r, err) {
			confirm = append(confirm, c.env)
		}
		if queue {
			qs, qi = append(qs, &queued{call: c, res: r}), append(qi, i)
		}
	}
	if len(confirm) > 0 {
		_ = p.cfg.Receipts.confirm(ctx, confirm) // best effort: see confirm
	}
	if len(qs) > 0 {
		// The offline queue batches concurrent writes (KafkaQueue's writer
		// does), so the notifications are handed to it all at once.
		var wg sync.WaitGroup
		for _, q := range qs {
			q.call.env.EventId = q.res.EventID
			wg.Go(func() { q.err = p.cfg.Offline.Enqueue(ctx, q.call.env) })
		}
		wg.Wait()
		p.settle(ctx, qs)
		for k, q := range qs {
			results[qi[k]], errs[qi[k]] = q.res, q.err
		}
	}
	for i, j := range dupOf {
		results[i], errs[i] = results[j], errs[j]
		if errs[i] == nil {
			results[i].Duplicate = true
		}
	}
	return results, errs
}

// scheduleReceipts schedules the receipts of the ack-or-push calls at idx
// in one pipeline, as Receipts.schedule does one. A call whose schedule
// failed is dropped from calls, with its error in errs.
func (p *Publisher) scheduleReceipts(ctx context.Context, idx []int, calls []*notifyCall, errs []error) {
	r := p.cfg.Receipts
	cmds := make([]*redis.IntCmd, len(idx))
	_, _ = r.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for k, i := range idx {
			env := calls[i].env
			cmds[k] = pl.ZAdd(ctx, r.dueKeyFor(env.GetUserId()),
				redis.Z{Score: float64(env.GetAckBy().AsTime().UnixMilli()), Member: env.GetId() + "|" + env.GetUserId()})
		}
		return nil
	})
	for k, i := range idx {
		if err := cmds[k].Err(); err != nil {
			calls[i], errs[i] = nil, fmt.Errorf("delivery: publish: %w", err)
		}
	}
}

// autoPipeline sends the scripts of concurrent Publish calls to Redis
// together. A call that finds no pipeline on its way goes at once, alone:
// at low load, it waits for nothing. Else it joins a queue; when the
// pipeline returns, its leader hands the queue (up to max calls) to the
// first call in it, which sends it as the next pipeline. It has no
// goroutine of its own: the callers take turns.
type autoPipeline struct {
	max int
	run func(ctx context.Context, calls []*notifyCall)

	mu       sync.Mutex
	inFlight int
	queue    []*notifyCall
}

// pipelinesInFlight is how many pipelines may be on their way at once. One:
// Redis runs scripts one after another whatever the number of connections,
// and the calls that arrive while a pipeline is on its way make the next
// one longer, which costs Redis and the router less per call. With 2 on 2
// shared cores, 32 concurrent callers took 25-40% longer per call
// (BenchmarkPublishParallel).
const pipelinesInFlight = 1

// do runs c's script, alone or in a pipeline with other calls', and
// returns when c's reply or error is set.
func (a *autoPipeline) do(c *notifyCall) {
	if a.max <= 1 {
		a.run(c.ctx, []*notifyCall{c})
		return
	}
	a.mu.Lock()
	if a.inFlight < pipelinesInFlight {
		a.inFlight++
		a.mu.Unlock()
		a.lead([]*notifyCall{c})
		return
	}
	c.wake = make(chan struct{}, 1)
	a.queue = append(a.queue, c)
	a.mu.Unlock()
	<-c.wake
	if c.batch != nil {
		a.lead(c.batch)
	}
}

// lead runs batch, whose first call is the caller's own, wakes the others,
// and hands the queue on.
func (a *autoPipeline) lead(batch []*notifyCall) {
	ctx := batch[0].ctx
	if len(batch) > 1 {
		// The pipeline is everyone's: the leader's caller going away must
		// not fail the others. A call whose context is done is skipped.
		ctx = context.WithoutCancel(ctx)
	}
	a.run(ctx, batch)
	for _, c := range batch[1:] {
		c.wake <- struct{}{}
	}
	a.mu.Lock()
	n := min(len(a.queue), a.max)
	if n == 0 {
		a.inFlight--
		a.mu.Unlock()
		return
	}
	next := make([]*notifyCall, n)
	copy(next, a.queue)
	rest := copy(a.queue, a.queue[n:])
	clear(a.queue[rest:])
	a.queue = a.queue[:rest]
	a.mu.Unlock()
	next[0].batch = next
	next[0].wake <- struct{}{}
}
