package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// loadAverage is the machine's 1-, 5- and 15-minute load averages, as
// /proc/loadavg gives them.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

// scaleReport adds the run's rows. The figures the goals table reads are
// "p50", "p99", "edge CPU per process", "lost" and "duplicated".
func (b *bench) scaleReport(sc string, c scaleConfig, rig *scaleRig, holders []*scaleHolder, run *scaleRun, base *loadResult) {
	r := b.rep
	accepted := run.accepted.count()
	delivered := run.seen.count()
	perEdge := make([]int, c.edges)
	run.seen.each(func(i int) { perEdge[i%c.edges]++ })

	r.add(sc, "edge processes", float64(c.edges), "procs")
	r.add(sc, "streams per edge", float64(c.streams), "streams")
	r.add(sc, "stream holder processes", float64(len(holders)), "procs")
	r.addVs(sc, "sent a second (at send time)", run.load.Rate, "/s", c.rate, "target rate")
	r.add(sc, "sent", float64(run.load.Sent), "calls")
	r.add(sc, "failed", float64(run.load.Failed), "calls")
	r.add(sc, "abandoned (never sent: the run overran)", float64(run.load.Abandoned), "calls")
	r.addVs(sc, "delivered", float64(delivered), "events", float64(accepted), "accepted online")
	r.add(sc, "lost", float64(run.lost()), "count")
	r.add(sc, "duplicated", float64(run.dup), "count")
	r.add(sc, "delivered to another user's stream", float64(run.misrouted), "count")
	r.add(sc, "streams closed by an edge", float64(run.closed), "count")
	if run.load.FirstErr != "" {
		r.note("scale: first Notify failure: %s", run.load.FirstErr)
	}
	if late := run.seen.count() - countBoth(run.seen, run.accepted); late > 0 {
		r.note("scale: %d events arrived whose Notify failed or was not answered online", late)
	}

	versus := "no-op gRPC same rate"
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p99.9", 0.999}, {"max", 1}} {
		r.addVs(sc, q.name, ms(run.latency.quantile(q.q)), "ms", ms(base.Latency.quantile(q.q)), versus)
	}

	var edgeCPU, edgeIdle time.Duration
	var busiest, rss float64
	for e, d := range rig.edges {
		w := run.cpu[d.pid]
		edgeCPU += w.cpu
		edgeIdle += run.idle[d.pid].cpu
		busiest = max(busiest, w.perSecond())
		name := "edge " + strconv.Itoa(e+1)
		r.add(sc, name+" CPU", w.perSecond(), "s/s")
		if perEdge[e] > 0 {
			r.add(sc, name+" CPU per delivered event", float64(w.cpu.Microseconds())/float64(perEdge[e]), "µs")
		}
		if s, err := readProc(d.pid); err == nil {
			rss += float64(s.RSS) / (1 << 20)
		}
	}
	n := float64(len(rig.edges))
	wall := run.cpu[rig.router.pid].wall
	r.add(sc, "edge CPU per process", edgeCPU.Seconds()/wall.Seconds()/n, "s/s")
	r.add(sc, "edge CPU per process, busiest", busiest, "s/s")
	if idleWall := run.idle[rig.router.pid].wall; idleWall > 0 {
		r.add(sc, "edge CPU per process, streams held, no events", edgeIdle.Seconds()/idleWall.Seconds()/n, "s/s")
	}
	if delivered > 0 {
		r.add(sc, "edge CPU per delivered event", float64(edgeCPU.Microseconds())/float64(delivered), "µs")
	}
	r.add(sc, "edge RSS per process", rss/n, "MiB")
	for _, p := range []struct {
		name string
		pid  int
	}{{"router", rig.router.pid}, {"redis-server", rig.redis.pid}} {
		w := run.cpu[p.pid]
		r.add(sc, p.name+" CPU", w.perSecond(), "s/s")
		r.add(sc, p.name+" CPU, streams held, no events", run.idle[p.pid].perSecond(), "s/s")
		if run.load.Sent > 0 {
			per := float64(w.cpu.Microseconds()) / float64(run.load.Sent)
			if p.name == "router" {
				r.addVs(sc, "router CPU per notification", per, "µs", b.noopCPU, "no-op gRPC CPU per call")
			} else {
				r.add(sc, p.name+" CPU per notification", per, "µs")
			}
		}
	}
	var clients time.Duration
	for _, pid := range append([]int{os.Getpid()}, holderPIDs(holders)...) {
		clients += run.cpu[pid].cpu
	}
	r.add(sc, "clients CPU (heraldbench and the stream holders)", clients.Seconds()/wall.Seconds(), "s/s")
	r.note("scale: %d edges × %d streams, %s Notify/s for %s; CPU is each process's over %.1f s, from the first Notify to the last event received; "+
		"idle edge CPU over the %s no-op baseline with the streams held; Redis is a redis-server of the run's own; load average %s",
		c.edges, c.streams, formatValue(c.rate), c.duration, wall.Seconds(), base.Elapsed.Round(time.Millisecond), loadAverage())
	for k, v := range map[string]string{"scale-edges": strconv.Itoa(c.edges), "scale-streams": strconv.Itoa(c.streams),
		"scale-rate": formatValue(c.rate), "scale-duration": c.duration.String()} {
		r.Settings[k] = v
	}
}

func holderPIDs(hs []*scaleHolder) []int {
	out := make([]int, len(hs))
	for i, h := range hs {
		out[i] = h.ch.pid
	}
	return out
}

// countBoth is how many ids are in both sets.
func countBoth(a, b bitset) int {
	n := 0
	a.each(func(i int) {
		if b.has(i) {
			n++
		}
	})
	return n
}
