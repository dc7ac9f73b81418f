package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// callFunc makes the i-th call of a run, whose schedule said sched.
type callFunc func(ctx context.Context, i int, sched time.Time) error

// loadResult is what a run measured on the calling side.
type loadResult struct {
	Sent   int // calls started
	Failed int // calls that returned an error
	// Abandoned are open-loop calls never made: still waiting for a worker
	// when the run overran its length by half (at least 2s).
	Abandoned int
	FirstErr  string        // the first error
	Elapsed   time.Duration // from the first start to the last start (open loop) or the run's length (closed loop)
	Rate      float64       // calls started a second, counted at send time
	Latency   hist          // completion time minus scheduled time (open loop) or start time (closed loop)
}

// openLoop makes rate calls a second for d from a pool of workers. The
// schedule is fixed in advance: call i is due at start + i/rate, and its
// latency is measured from that moment, not from when a worker got to it, so
// that a stall shows in the tail instead of silently lowering the rate
// (coordinated omission).
func openLoop(ctx context.Context, rate float64, d time.Duration, workers int, call callFunc) loadResult {
	n := int(rate * d.Seconds())
	if n < 1 {
		n = 1
	}
	interval := time.Duration(float64(time.Second) / rate)
	due := make(chan int, n)
	var (
		mu        sync.Mutex
		res       loadResult
		firstSend atomic.Int64
		lastSend  atomic.Int64
	)
	start := time.Now().Add(20 * time.Millisecond)
	// A system that cannot keep up would make the run last as long as its
	// backlog takes: calls still waiting this long after the end are
	// abandoned, and counted.
	giveUp := start.Add(d + max(d/2, 2*time.Second))
	var abandoned atomic.Int64
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			var local hist
			var failed int
			var firstErr error
			for i := range due {
				sched := start.Add(time.Duration(i) * interval)
				if time.Now().After(giveUp) {
					abandoned.Add(1)
					continue
				}
				now := time.Now().UnixNano()
				firstSend.CompareAndSwap(0, now)
				for last := lastSend.Load(); now > last && !lastSend.CompareAndSwap(last, now); last = lastSend.Load() {
				}
				err := call(ctx, i, sched)
				local.record(time.Since(sched))
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			mu.Lock()
			res.Latency.merge(&local)
			res.Failed += failed
			if firstErr != nil && res.FirstErr == "" {
				res.FirstErr = firstErr.Error()
			}
			mu.Unlock()
		})
	}
	// The dispatcher hands out every call that is due, then sleeps until the
	// next one is.
	next := 0
	for next < n && ctx.Err() == nil {
		now := time.Now()
		for next < n && !start.Add(time.Duration(next)*interval).After(now) {
			due <- next
			next++
		}
		if next < n {
			time.Sleep(time.Until(start.Add(time.Duration(next) * interval)))
		}
	}
	close(due)
	wg.Wait()
	res.Abandoned = int(abandoned.Load())
	res.Sent = next - res.Abandoned
	res.Elapsed = time.Duration(lastSend.Load() - firstSend.Load())
	if res.Sent > 1 && res.Elapsed > 0 {
		res.Rate = float64(res.Sent-1) / res.Elapsed.Seconds()
	}
	return res
}

// closedLoop runs callers that each make one call after another for d: the
// highest rate the system sustains with that many calls in flight.
func closedLoop(ctx context.Context, callers int, d time.Duration, call callFunc) loadResult {
	end := time.Now().Add(d)
	return closedRun(ctx, callers, func(_ int, now time.Time) bool { return !now.Before(end) }, call)
}

// closedCount makes n calls from callers that each make one after another.
func closedCount(ctx context.Context, callers, n int, call callFunc) loadResult {
	return closedRun(ctx, callers, func(i int, _ time.Time) bool { return i >= n }, call)
}

// closedRun runs callers that each make one call after another until done
// says so of the next call's number and start.
func closedRun(ctx context.Context, callers int, done func(i int, now time.Time) bool, call callFunc) loadResult {
	var (
		mu  sync.Mutex
		res loadResult
		seq atomic.Int64
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range max(callers, 1) {
		wg.Go(func() {
			var local hist
			var sent, failed int
			var firstErr error
			for ctx.Err() == nil {
				t := time.Now()
				i := int(seq.Add(1) - 1)
				if done(i, t) {
					break
				}
				err := call(ctx, i, t)
				local.record(time.Since(t))
				sent++
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			mu.Lock()
			res.Latency.merge(&local)
			res.Sent += sent
			res.Failed += failed
			if firstErr != nil && res.FirstErr == "" {
				res.FirstErr = firstErr.Error()
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Rate = float64(res.Sent) / res.Elapsed.Seconds()
	return res
}

// sourceAddr is the k-th loopback source address, 127.0.0.2 and on: the
// edge limits streams per client address, and each source address has its
// own range of ephemeral ports.
func sourceAddr(k int) string {
	k += 2
	return net.IPv4(127, byte(k>>16), byte(k>>8), byte(k)).String()
}

// fleet is the child processes that hold one scenario's connections.
type fleet struct {
	children []*child
	conns    int
}

type fleetConfig struct {
	edge     string // edge base URL
	secret   []byte
	prefix   string // user id prefix
	count    int
	topic    string
	perAddr  int  // connections per source address; 0 lets the kernel choose
	loopback bool // the edge is on loopback, so 127.0.0.x sources work
	perChild int
	dials    int
	h2       int // streams per HTTP/2 connection; 0: HTTP/1.1
}

// openFleet opens cfg.count connections spread over child processes and
// source addresses. It returns an error when any connection failed.
func openFleet(ctx context.Context, cfg fleetConfig) (*fleet, error) {
	f := &fleet{}
	nChildren := (cfg.count + cfg.perChild - 1) / cfg.perChild
	type out struct {
		r   reply
		err error
	}
	outs := make([]out, nChildren)
	var wg sync.WaitGroup
	for j := range nChildren {
		c, err := startChild(ctx)
		if err != nil {
			f.close()
			return nil, err
		}
		f.children = append(f.children, c)
		first := j * cfg.perChild
		count := min(cfg.perChild, cfg.count-first)
		cmd := command{Op: "open", Edge: cfg.edge, Secret: cfg.secret, Prefix: cfg.prefix,
			First: first, Count: count, Topic: cfg.topic, Dials: cfg.dials, H2: cfg.h2}
		if cfg.loopback && cfg.perAddr > 0 {
			cmd.Addrs = make([]string, count)
			for i := range count {
				cmd.Addrs[i] = sourceAddr((first + i) / cfg.perAddr)
			}
		}
		wg.Go(func() {
			r, err := c.call(cmd)
			outs[j] = out{r, err}
		})
	}
	wg.Wait()
	var failed int
	var firstErr string
	for _, o := range outs {
		if o.err != nil {
			f.close()
			return nil, o.err
		}
		f.conns += o.r.Opened
		failed += o.r.Failed
		if firstErr == "" {
			firstErr = o.r.Error
		}
	}
	if failed > 0 {
		f.close()
		return nil, fmt.Errorf("%d of %d connections failed; first: %s", failed, cfg.count, firstErr)
	}
	return f, nil
}

func (f *fleet) each(op string) ([]reply, error) {
	rs := make([]reply, len(f.children))
	errs := make([]error, len(f.children))
	var wg sync.WaitGroup
	for i, c := range f.children {
		wg.Go(func() { rs[i], errs[i] = c.call(command{Op: op}) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return rs, nil
}

func (f *fleet) reset() error {
	_, err := f.each("reset")
	return err
}

// report merges the children's measurements since the last reset.
func (f *fleet) report() (reply, error) {
	rs, err := f.each("report")
	if err != nil {
		return reply{}, err
	}
	sum := reply{Latency: &hist{}}
	for _, r := range rs {
		sum.Received += r.Received
		sum.Bad += r.Bad
		sum.Closed += r.Closed
		if sum.CloseErr == "" {
			sum.CloseErr = r.CloseErr
		}
		sum.Latency.merge(r.Latency)
	}
	return sum, nil
}

// waitReceived polls until want events arrived or timeout passed, and
// returns the last report.
func (f *fleet) waitReceived(want uint64, timeout time.Duration) (reply, error) {
	deadline := time.Now().Add(timeout)
	for {
		r, err := f.report()
		if err != nil || r.Received >= want || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fleet) close() {
	for _, c := range f.children {
		_ = c.stop()
	}
	f.children = nil
}
