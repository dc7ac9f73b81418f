package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// The scale scenario (issue 17, goal 9): several edge processes, each
// holding many streams, one router and one Redis, all real binaries in
// processes of their own, and Notify at a fixed rate to users spread over
// every edge. Every event is accounted for by its notification id: lost,
// duplicated or delivered to the wrong stream fails the run.

// scaleConfig is the scale scenario's flags.
type scaleConfig struct {
	edges    int
	streams  int // per edge
	rate     float64
	duration time.Duration
	bin      string // directory of prebuilt router and sseedge; empty builds them
}

// scaleSpareFiles is what an edge needs open besides its streams: Redis
// connections, listeners, epoll, logs.
const scaleSpareFiles = 100

// scaleMaxIDs bounds the notifications of one run: each holder keeps a bit
// per notification, and reports them all at the end.
const scaleMaxIDs = 50_000_000

func scaleFlags(fs *flag.FlagSet, c *scaleConfig) {
	fs.IntVar(&c.edges, "scale-edges", 3, "scale scenario: edge processes (cmd/sseedge), sharing one router and one Redis")
	fs.IntVar(&c.streams, "scale-streams", 19900, "scale scenario: streams per edge, each a distinct user; at most the open-file limit less 100")
	fs.Float64Var(&c.rate, "scale-rate", 10000, "scale scenario: Notify a second, open loop, to users spread over every edge")
	fs.DurationVar(&c.duration, "scale-duration", 60*time.Second, "scale scenario: length of the Notify run")
	fs.StringVar(&c.bin, "scale-bin", "", "scale scenario: directory holding built router and sseedge binaries; empty builds them with the go command")
}

func (c scaleConfig) validate() error {
	switch {
	case c.edges < 1 || c.edges > 64:
		return fmt.Errorf("-scale-edges %d: want 1 to 64", c.edges)
	case c.streams < 1:
		return fmt.Errorf("-scale-streams %d: must be positive", c.streams)
	case c.rate <= 0 || c.duration <= 0:
		return errors.New("-scale-rate and -scale-duration must be positive")
	case c.rate*c.duration.Seconds() > scaleMaxIDs:
		return fmt.Errorf("-scale-rate × -scale-duration is %.0f notifications; at most %d", c.rate*c.duration.Seconds(), scaleMaxIDs)
	}
	return nil
}

// fileLimit is the hard limit on open files of this process and of the
// children it starts.
func fileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max > 1<<30 {
		return 1 << 30
	}
	return int(lim.Max)
}

// scaleRun is what one run measured.
type scaleRun struct {
	load      loadResult
	notOnline int64  // calls answered with another route than online
	accepted  bitset // ids whose Notify was answered online
	seen      bitset // ids received on their own stream
	dup       uint64
	misrouted uint64
	bad       uint64
	closed    int
	latency   hist
	cpu       map[int]cpuWindow // by pid, over the load and its delivery
	idle      map[int]cpuWindow // by pid, over the no-op baseline: streams held, no events
}

// cpuWindow is a process's CPU time over a wall-clock window.
type cpuWindow struct {
	cpu, wall time.Duration
}

func (w cpuWindow) perSecond() float64 {
	if w.wall <= 0 {
		return 0
	}
	return w.cpu.Seconds() / w.wall.Seconds()
}

// cpuMeter reads the CPU time of a set of processes.
type cpuMeter struct {
	pids []int
	at   time.Time
	cpu  map[int]time.Duration
}

func startCPUMeter(pids []int) *cpuMeter {
	m := &cpuMeter{pids: pids}
	m.at, m.cpu = m.read()
	return m
}

func (m *cpuMeter) read() (time.Time, map[int]time.Duration) {
	now := time.Now()
	out := make(map[int]time.Duration, len(m.pids))
	for _, pid := range m.pids {
		if s, err := readProc(pid); err == nil {
			out[pid] = s.CPU
		}
	}
	return now, out
}

// since is each process's CPU from the meter's start to (at, cpu).
func (m *cpuMeter) since(at time.Time, cpu map[int]time.Duration) map[int]cpuWindow {
	out := make(map[int]cpuWindow, len(m.pids))
	for pid, c := range cpu {
		out[pid] = cpuWindow{cpu: c - m.cpu[pid], wall: at.Sub(m.at)}
	}
	return out
}

func (b *bench) scale(ctx context.Context) (err error) {
	const sc = "scale"
	c := b.cfg.scale
	if limit := fileLimit(); c.streams > limit-scaleSpareFiles {
		return fmt.Errorf("-scale-streams %d: an edge may have %d open files, and needs %d besides its streams", c.streams, limit, scaleSpareFiles)
	}
	if c.edges*c.streams > 1<<20 {
		return fmt.Errorf("%d edges × %d streams: at most %d streams in all", c.edges, c.streams, 1<<20)
	}
	total := int(c.rate * c.duration.Seconds())
	b.progress("scale: starting redis-server, the router and %d edges", c.edges)
	rig, err := startScaleRig(ctx, c, b.tag, c.streams+scaleSpareFiles)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := rig.close(); err == nil {
			err = cerr
		}
	}()
	prefix := b.tag + "-sc-"
	b.progress("scale: opening %d streams on each of %d edges", c.streams, c.edges)
	holders, err := openScaleStreams(ctx, b.cfg, rig, prefix, total)
	defer func() {
		// Each closes its streams at a measured pace: all at once.
		var wg sync.WaitGroup
		for _, h := range holders {
			wg.Go(func() { _ = h.stop() })
		}
		wg.Wait()
	}()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(rig.grpc, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := heraldv1.NewRouterServiceClient(conn)

	servers := []int{rig.router.pid, rig.redis.pid}
	for _, e := range rig.edges {
		servers = append(servers, e.pid)
	}
	clients := []int{os.Getpid()}
	for _, h := range holders {
		clients = append(clients, h.ch.pid)
	}
	run := scaleRun{accepted: newBitset(total)}

	// Warm-up: the processes' first seconds (connections, scripts loaded,
	// heaps grown) are not the steady state. Its events carry negative ids.
	warm := min(2*time.Second, c.duration)
	b.progress("scale: warm-up: %.0f Notify/s for %s", c.rate, warm)
	var warmOK atomic.Int64
	openLoop(ctx, c.rate, warm, b.cfg.workers, func(ctx context.Context, i int, sched time.Time) error {
		e, s := scaleTarget(i, c.edges, c.streams)
		resp, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: scaleUser(prefix, e, s), Event: "bench", Data: notifyData(sched, -1-i)})
		if err == nil && resp.GetRoute() == heraldv1.Route_ROUTE_ONLINE {
			warmOK.Add(1)
		}
		return err
	})
	if _, err := waitScale(ctx, holders, uint64(warmOK.Load()), warmed, nil); err != nil {
		return err
	}

	// The baseline, with every stream held and no event sent: the no-op
	// call at the same rate, and the processes' idle CPU.
	d := min(b.cfg.baseDuration, c.duration)
	b.progress("scale: baseline: no-op gRPC open loop at %.0f/s for %s", c.rate, d)
	noop, err := startNoopGRPC()
	if err != nil {
		return err
	}
	idle := startCPUMeter(servers)
	base := openLoop(ctx, c.rate, d, b.cfg.workers, noop.call)
	run.idle = idle.since(idle.read())
	noop.close()
	if base.Failed > 0 {
		return fmt.Errorf("no-op gRPC baseline: %d failed: %s", base.Failed, base.FirstErr)
	}

	b.progress("scale: %.0f Notify/s for %s over %d streams on %d edges", c.rate, c.duration, c.edges*c.streams, c.edges)
	meter := startCPUMeter(append(servers, clients...))
	var notOnline atomic.Int64
	run.load = openLoop(ctx, c.rate, c.duration, b.cfg.workers, scaleNotifier(client, prefix, c, &notOnline, &run.accepted))
	run.notOnline = notOnline.Load()
	expected := uint64(run.accepted.count())
	// The CPU window ends when the last event arrives, or at the last
	// progress if some never do.
	last, err := waitScale(ctx, holders, expected, received, meter)
	if err != nil {
		return err
	}
	run.cpu = meter.since(last.at, last.cpu)
	if err := collectScale(holders, &run, total); err != nil {
		return err
	}
	b.scaleReport(sc, c, rig, holders, &run, &base)
	return errors.Join(rig.exited(), scaleVerdict(&run))
}

// openScaleStreams opens every edge's streams from holder processes of at
// most -per-child streams each, each stream from its own slot of source
// addresses.
func openScaleStreams(ctx context.Context, cfg config, rig *scaleRig, prefix string, total int) ([]*scaleHolder, error) {
	c := cfg.scale
	all := c.edges * c.streams
	n := (all + cfg.perChild - 1) / cfg.perChild
	holders := make([]*scaleHolder, 0, n)
	cmds := make([][]scaleCommand, n)
	for k := 0; k < all; {
		e, s := k/c.streams, k%c.streams
		j := k / cfg.perChild
		count := min(c.streams-s, (j+1)*cfg.perChild-k)
		cmd := scaleCommand{Op: "open", URL: rig.urls[e], Edge: e, Secret: rig.secret, Prefix: prefix,
			First: s, Count: count, Dials: cfg.dials, Edges: c.edges, Streams: c.streams, Total: total}
		if cfg.perAddr > 0 {
			cmd.Addrs = make([]string, count)
			for i := range count {
				cmd.Addrs[i] = sourceAddr((k + i) / cfg.perAddr)
			}
		}
		cmds[j] = append(cmds[j], cmd)
		k += count
	}
	for range n {
		h, err := startScaleHolder(ctx)
		if err != nil {
			return holders, err
		}
		holders = append(holders, h)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for j, h := range holders {
		wg.Go(func() {
			for _, cmd := range cmds[j] {
				r, err := h.call(cmd)
				if err == nil && (r.Failed > 0 || r.Error != "") {
					err = fmt.Errorf("edge %d: %d of %d streams failed; first: %s", cmd.Edge+1, r.Failed, cmd.Count, r.Error)
				}
				if err != nil {
					errs[j] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return holders, errors.Join(errs...)
}

// scaleNotifier makes call i a Notify to notification i's user, and marks
// i accepted when the router answers that it went online.
func scaleNotifier(client heraldv1.RouterServiceClient, prefix string, c scaleConfig, notOnline *atomic.Int64, accepted *bitset) callFunc {
	var mu sync.Mutex
	return func(ctx context.Context, i int, sched time.Time) error {
		e, s := scaleTarget(i, c.edges, c.streams)
		resp, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: scaleUser(prefix, e, s), Event: "bench", Data: notifyData(sched, i)})
		if err != nil {
			return err
		}
		if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
			notOnline.Add(1)
			return fmt.Errorf("route %s, want online", resp.GetRoute())
		}
		mu.Lock()
		accepted.set(i)
		mu.Unlock()
		return nil
	}
}

func (s bitset) count() int {
	n := 0
	for _, b := range s {
		n += bits.OnesCount8(b)
	}
	return n
}

// scaleDrain is how long the run waits for more events once none arrive.
const scaleDrain = 10 * time.Second

// meterReading is a CPU reading taken while waiting.
type meterReading struct {
	at  time.Time
	cpu map[int]time.Duration
}

func received(r scaleReply) uint64 { return r.Received }
func warmed(r scaleReply) uint64   { return r.Warm }

// waitScale polls the holders until the sum of count over them reaches
// want, or stops moving for scaleDrain, and returns the CPU reading of the
// last progress (none without m).
func waitScale(ctx context.Context, holders []*scaleHolder, want uint64, count func(scaleReply) uint64, m *cpuMeter) (meterReading, error) {
	var last meterReading
	var got uint64
	moved := time.Now()
	for {
		at, cpu := time.Now(), map[int]time.Duration{}
		if m != nil {
			at, cpu = m.read()
		}
		var sum uint64
		for _, h := range holders {
			r, err := h.call(scaleCommand{Op: "report"})
			if err != nil {
				return last, err
			}
			sum += count(r)
		}
		if sum > got || last.cpu == nil {
			got, moved, last = sum, at, meterReading{at, cpu}
		}
		if got >= want || time.Since(moved) > scaleDrain {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// collectScale merges the holders' full reports into run.
func collectScale(holders []*scaleHolder, run *scaleRun, total int) error {
	run.seen = newBitset(total)
	for _, h := range holders {
		r, err := h.call(scaleCommand{Op: "report", Full: true})
		if err != nil {
			return err
		}
		if err := run.merge(r); err != nil {
			return fmt.Errorf("scale holder %d: %w", h.ch.pid, err)
		}
	}
	return nil
}

// merge adds a holder's full report to run.
func (run *scaleRun) merge(r scaleReply) error {
	if len(r.Seen) != len(run.seen) {
		return fmt.Errorf("%d bytes of ids, want %d", len(r.Seen), len(run.seen))
	}
	for k, v := range r.Seen {
		// An id seen by two holders was received twice.
		run.dup += uint64(bits.OnesCount8(run.seen[k] & v))
		run.seen[k] |= v
	}
	run.dup += r.Duplicated
	run.misrouted += r.Misrouted
	run.bad += r.Bad
	run.closed += r.Closed
	run.latency.merge(r.Latency)
	return nil
}

// lost is the ids accepted online and never received on their stream.
func (run *scaleRun) lost() int {
	n := 0
	run.accepted.each(func(i int) {
		if !run.seen.has(i) {
			n++
		}
	})
	return n
}

// scaleVerdict fails the run on any event lost, duplicated, misrouted or
// unreadable, any stream an edge closed, and any Notify that failed.
func scaleVerdict(run *scaleRun) error {
	var problems []string
	for _, p := range []struct {
		n    int
		what string
	}{
		{run.lost(), "lost"}, {int(run.dup), "duplicated"}, {int(run.misrouted), "delivered to another user's stream"},
		{int(run.bad), "unreadable"}, {run.closed, "streams closed by an edge"},
		{run.load.Failed, "Notify calls failed (" + strconv.FormatInt(run.notOnline, 10) + " of them not routed online)"},
	} {
		if p.n > 0 {
			problems = append(problems, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, ", "))
	}
	return nil
}
