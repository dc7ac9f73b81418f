package delivery

import (
	"context"
	"fmt"
	"sync"

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
	ctx, span := p.startSpan(ctx, "herald.publish_batch", nil)
	defer endSpan(span, Result{}, nil)
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
		if span != nil {
			SetTrace(ctx, n.Env)
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
		_ = p.cfg.Receipts.Confirm(ctx, confirm) // best effort: see Receipts.Confirm
	}
	if len(qs) > 0 {
		// The offline queue batches concurrent writes (queue.Kafka's writer
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
// in one pipeline (see Receipts.Schedule). A call whose schedule failed is
// dropped from calls, with its error in errs.
func (p *Publisher) scheduleReceipts(ctx context.Context, idx []int, calls []*notifyCall, errs []error) {
	envs := make([]*heraldv1.Envelope, len(idx))
	for k, i := range idx {
		envs[k] = calls[i].env
	}
	for k, err := range p.cfg.Receipts.Schedule(ctx, envs) {
		if err != nil {
			calls[idx[k]], errs[idx[k]] = nil, fmt.Errorf("delivery: publish: %w", err)
		}
	}
}
