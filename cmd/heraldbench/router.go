package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// router measures the highest Notify rate, closed loop from -callers
// callers to the users of a fleet, in -pairs pairs of rounds: the no-op
// gRPC call, then Notify, so that the rate's, the round trip's and the CPU
// per call's ratios to the no-op call's are each taken over the same
// seconds (pairs.go). Then the NotifyBatch runs (batch.go).
func (b *bench) router(ctx context.Context) error {
	prefix := b.tag + "-rt-"
	f, noop, err := b.fleetAndNoop(ctx, "router", prefix)
	if err != nil {
		return err
	}
	defer f.close()
	rt, haveRouter := b.proc("router")
	rpid, haveRedis := b.proc("redis-server")
	haveRedis = haveRedis && rpid.Name == "redis-server"
	pairs := b.cfg.pairs
	baseD, subjD := roundLength(b.cfg.baseDuration, pairs), roundLength(b.cfg.duration, pairs)
	var (
		res, base          loadResult // the rounds together
		received           uint64
		cpu, redisCPU      time.Duration
		rates, baseRates   []float64 // per round
		cpuPer, baseCPUPer []float64 // µs a call, per round
		lats, baseLats     []*hist
	)
	noopRound := func(int) error {
		self0, _ := readProc(os.Getpid())
		r := closedLoop(ctx, b.cfg.callers, baseD, noop.call)
		self1, _ := readProc(os.Getpid())
		if r.Failed > 0 {
			return fmt.Errorf("no-op gRPC: %d failed: %s", r.Failed, r.FirstErr)
		}
		base.addRound(r)
		baseRates, baseLats = append(baseRates, r.Rate), append(baseLats, &r.Latency)
		baseCPUPer = append(baseCPUPer, perCall(self1.CPU-self0.CPU, r.Sent))
		return nil
	}
	notifyRound := func(int) error {
		if err := f.reset(); err != nil {
			return err
		}
		cpu0, _ := readProc(rt.PID)
		redis0, _ := readProc(rpid.PID)
		r := closedLoop(ctx, b.cfg.callers, subjD, b.notifier(prefix, f.conns))
		cpu1, _ := readProc(rt.PID)
		redis1, _ := readProc(rpid.PID)
		got, err := f.waitReceived(uint64(r.Sent-r.Failed), 5*time.Second)
		if err != nil {
			return err
		}
		res.addRound(r)
		received += got.Received
		cpu, redisCPU = cpu+cpu1.CPU-cpu0.CPU, redisCPU+redis1.CPU-redis0.CPU
		rates, lats = append(rates, r.Rate), append(lats, &r.Latency)
		cpuPer = append(cpuPer, perCall(cpu1.CPU-cpu0.CPU, r.Sent))
		return nil
	}
	b.progress("router: %d pairs of rounds, %d callers: the no-op gRPC call for %s, then Notify for %s", pairs, b.cfg.callers, baseD, subjD)
	if err := inPairs(ctx, pairs, noopRound, notifyRound); err != nil {
		return fmt.Errorf("router: %w", err)
	}

	sc := "router"
	b.rep.addVs(sc, fmt.Sprintf("Notify a second, closed loop, %d callers", b.cfg.callers), res.Rate, "/s", b.publishRate, "pipelined PUBLISH")
	b.rep.addPaired(sc, "Notify a second, against the no-op call", res.Rate, "/s", pairedRatios(baseRates, rates), "no-op gRPC")
	b.rep.add(sc, "no-op gRPC calls a second, in the rounds between", base.Rate, "call/s")
	b.rep.add(sc, "failed", float64(res.Failed), "calls")
	b.rep.addVs(sc, "delivered", float64(received), "events", float64(res.Sent), "sent")
	if res.FirstErr != "" {
		b.rep.note("router: first failure: %s", res.FirstErr)
	}
	lr := latencyRatios(baseLats, lats)
	b.rep.addPaired(sc, "Notify round trip p50", ms(res.Latency.quantile(0.5)), "ms", lr[q50], "no-op gRPC")
	b.rep.addPaired(sc, "Notify round trip p99", ms(res.Latency.quantile(0.99)), "ms", lr[q99], "no-op gRPC")
	if haveRouter {
		what := "router CPU per notification"
		if b.sys != nil {
			what = "process CPU per notification (router, edge, client)"
		}
		b.rep.addPaired(sc, what, perCall(cpu, res.Sent), "µs", pairedRatios(baseCPUPer, cpuPer), "no-op gRPC")
	}
	if haveRedis {
		b.rep.add(sc, "redis-server CPU per notification", perCall(redisCPU, res.Sent), "µs")
	}
	return b.routerBatch(ctx, f, prefix)
}

// perCall is d in µs over n calls.
func perCall(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }
