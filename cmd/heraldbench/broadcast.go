package main

import (
	"context"
	"slices"
	"time"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// broadcast is the broadcast scenario: a fleet of streams on one topic, and
// broadcasts to it one at a time, each timed until every stream has it.
func (b *bench) broadcast(ctx context.Context) error {
	topic := b.tag + ".bcast"
	b.progress("broadcast: opening %d connections on topic %s", b.cfg.broadcastConns, topic)
	f, err := openFleet(ctx, b.fleetConfig(b.tag+"-bc-", b.cfg.broadcastConns, topic))
	if err != nil {
		return err
	}
	defer f.close()
	edge, haveEdge := b.proc("edge")
	var all hist
	var toAll []time.Duration
	var cpu time.Duration
	var delivered, allocs uint64
	for k := range b.cfg.broadcasts {
		if err := f.reset(); err != nil {
			return err
		}
		c0, _ := readProc(edge.PID)
		a0 := heapAllocs()
		now := time.Now()
		if _, err := b.client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: topic, Event: "bench", Data: notifyData(now, k)}); err != nil {
			return err
		}
		// The edge's work is done when the last connection has its event;
		// the CPU it spent is read as soon as that is seen.
		got, err := f.waitReceived(uint64(f.conns), 10*time.Second)
		if err != nil {
			return err
		}
		c1, _ := readProc(edge.PID)
		allocs += heapAllocs() - a0
		cpu += c1.CPU - c0.CPU
		delivered += got.Received
		all.merge(got.Latency)
		toAll = append(toAll, time.Duration(got.Latency.Max))
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(toAll)
	sc := "broadcast"
	b.rep.add(sc, "connections on the topic", float64(f.conns), "conns")
	b.rep.addVs(sc, "delivered", float64(delivered), "events", float64(f.conns*b.cfg.broadcasts), "expected")
	b.rep.add(sc, "time to deliver one broadcast to all, median", ms(toAll[len(toAll)/2]), "ms")
	b.rep.add(sc, "time to deliver one broadcast to all, worst", ms(toAll[len(toAll)-1]), "ms")
	b.rep.add(sc, "per-connection delivery p50", ms(all.quantile(0.5)), "ms")
	b.rep.add(sc, "per-connection delivery p99", ms(all.quantile(0.99)), "ms")
	if b.sys != nil && delivered > 0 {
		// The clients are child processes: this process's allocations are
		// the edge's (the router's 30 calls are noise).
		b.rep.add(sc, "edge heap allocations per delivery", float64(allocs)/float64(delivered), "objects")
	}
	if haveEdge && cpu > 0 {
		b.rep.addVs(sc, "deliveries per edge core-second", float64(delivered)/cpu.Seconds(), "/core-s", b.publishRate, "pipelined PUBLISH msg/s")
		b.rep.add(sc, "edge CPU per delivery", float64(cpu.Nanoseconds())/1e3/float64(delivered), "µs")
	} else if haveEdge {
		b.rep.note("broadcast: edge CPU time did not move (10 ms ticks); use more connections or broadcasts")
	}
	return nil
}
