package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
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
	c.wake.Add(1)
	a.queue = append(a.queue, c)
	a.mu.Unlock()
	c.wake.Wait()
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
		c.wake.Done()
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
	next[0].wake.Done()
}

// runScripts runs the calls' notify scripts in one pipeline (on a Redis
// Cluster, one per node), and sets each call's reply or error. The scripts
// Redis did not have cached are loaded and run again; only those, since
// the others have run. A call whose context is done is not run.
func (p *Publisher) runScripts(ctx context.Context, calls []*notifyCall) {
	cmds := make([]*redis.Cmd, len(calls))
	run := func(which []int, sha bool) {
		_, _ = p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for _, i := range which {
				cmds[i] = p.scripts.notify.Queue(ctx, pl, sha, calls[i].keys, calls[i].args...)
			}
			return nil
		})
	}
	todo := make([]int, 0, len(calls))
	for i, c := range calls {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return
	}
	if len(todo) > 1 && !p.sharded {
		p.runBatchScripts(ctx, calls, todo)
		return
	}
	run(todo, true)
	again := todo[:0]
	for _, i := range todo {
		if noScript(cmds[i].Err()) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		// EVAL caches the script on the node that runs it, so that the
		// next pipeline finds it.
		run(again, false)
	}
	for i, c := range calls {
		if cmds[i] != nil {
			if v, err := cmds[i].Result(); err != nil {
				c.err = err
			} else {
				c.reply, c.err = batchReply(v)
			}
		}
	}
}

// maxScriptBatch is the most notifications one notify_batch script
// carries: about a millisecond of Redis, which other clients wait for.
const maxScriptBatch = 128

// runBatchScripts runs the calls at todo, on a single Redis, as notify_batch
// scripts of up to maxScriptBatch notifications, in one pipeline, and sets
// each call's reply or error.
func (p *Publisher) runBatchScripts(ctx context.Context, calls []*notifyCall, todo []int) {
	type chunk struct {
		idx  []int
		keys []string
		args []any
		cmd  *redis.Cmd
	}
	var chunks []*chunk
	for len(todo) > 0 {
		n := min(len(todo), maxScriptBatch)
		// The publisher's settings, the same in every call, go once.
		nkeys, nargs := 0, 1+scriptConfigArgs
		for _, i := range todo[:n] {
			nkeys += len(calls[i].keys)
			nargs += len(calls[i].args) - scriptConfigArgs
		}
		ch := &chunk{idx: todo[:n], keys: make([]string, 0, nkeys), args: make([]any, 0, nargs)}
		ch.args = append(append(ch.args, n), calls[todo[0]].args[:scriptConfigArgs]...)
		for _, i := range ch.idx {
			ch.keys = append(ch.keys, calls[i].keys...)
			ch.args = append(ch.args, calls[i].args[scriptConfigArgs:]...)
		}
		chunks, todo = append(chunks, ch), todo[n:]
	}
	run := func(which []*chunk, sha bool) {
		_, _ = p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for _, ch := range which {
				ch.cmd = p.scripts.notifyBatch.Queue(ctx, pl, sha, ch.keys, ch.args...)
			}
			return nil
		})
	}
	run(chunks, true)
	var again []*chunk
	for _, ch := range chunks {
		if noScript(ch.cmd.Err()) {
			again = append(again, ch)
		}
	}
	if len(again) > 0 {
		run(again, false)
	}
	for _, ch := range chunks {
		replies, err := ch.cmd.Slice()
		if err == nil && len(replies) != 3*len(ch.idx) {
			err = fmt.Errorf("%d reply values to %d notifications", len(replies), len(ch.idx))
		}
		for k, i := range ch.idx {
			c := calls[i]
			if err != nil {
				c.err = err
				continue
			}
			c.reply, c.err = batchReply(flatReply(replies[3*k : 3*k+3]))
		}
	}
}

// flatReply is one notification's reply in a notify_batch reply, which is
// flat, three values each (a table per notification cost Redis about 5,000
// instructions to convert): route, subscribers and event id, or "dup" and
// the stored record, or "err" and the message, each of those two with an
// empty third.
func flatReply(vs []any) []any {
	if s, _ := vs[0].(string); s == "dup" || s == "err" {
		return vs[:2]
	}
	return vs
}

// batchReply decodes one notification's reply: a notify script's, or one
// in a notify_batch reply. Its subscriber count is an integer (a Lua
// number made a string costs Redis a float format).
func batchReply(v any) ([]string, error) {
	vs, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected reply %v", v)
	}
	out := make([]string, len(vs))
	for i, x := range vs {
		switch x := x.(type) {
		case string:
			out[i] = x
		case int64:
			out[i] = strconv.FormatInt(x, 10)
		default:
			return nil, fmt.Errorf("unexpected reply %v", v)
		}
	}
	if len(out) == 2 && out[0] == "err" {
		return nil, errors.New(out[1])
	}
	return out, nil
}
