package delivery

import (
	"context"
	"sync"
)

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
