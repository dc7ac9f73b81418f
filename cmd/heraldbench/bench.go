package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// bench is one run: the system under test, the clients, the baselines and
// the report being filled.
type bench struct {
	cfg    config
	log    io.Writer
	sys    *system // with -self
	conn   *grpc.ClientConn
	client heraldv1.RouterServiceClient
	tag    string // names this run's users and topic
	rep    *report

	procs []namedPID
	// Baselines.
	publishRate float64
	noop        loadResult
	noopCPU     float64   // µs of this process's CPU per no-op call
	noopSrv     *noopGRPC // the no-op gRPC server, kept for the paired rounds
	fcm         loadResult
}

func newBench(ctx context.Context, cfg config, log io.Writer) (*bench, error) {
	b := &bench{cfg: cfg, log: log}
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	b.tag = "hb" + hex.EncodeToString(tag)
	host, _ := os.Hostname()
	b.rep = &report{Date: time.Now().Format("2006-01-02 15:04"), Host: host, CPUs: runtime.NumCPU(),
		Settings: map[string]string{}}
	if cfg.self {
		maxConns := max(cfg.idleConns, cfg.conns, cfg.broadcastConns, cfg.soak.conns, cfg.pollClients) + 100
		sys, err := startSystem(ctx, cfg.redisAddr, maxConns, cfg.tune)
		if err != nil {
			return nil, err
		}
		b.sys = sys
		b.cfg.grpcAddr, b.cfg.edgeURL, b.cfg.secret, b.cfg.redisAddr = sys.grpcAddr, sys.edgeURL, sys.secret, sys.redisAddr
		b.procs = append(b.procs, namedPID{"herald (self)", os.Getpid()})
	}
	b.procs = append(b.procs, cfg.pids...)
	if pid := redisPID(ctx, b.cfg.redisAddr); pid > 0 {
		b.procs = append(b.procs, namedPID{"redis-server", pid})
	}
	conn, err := grpc.NewClient(b.cfg.grpcAddr, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		b.close()
		return nil, err
	}
	b.conn, b.client = conn, heraldv1.NewRouterServiceClient(conn)
	// Connect before anything is timed.
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		b.close()
		return nil, fmt.Errorf("router %s: %w", b.cfg.grpcAddr, err)
	}
	for k, v := range map[string]string{
		"self": strconv.FormatBool(cfg.self), "grpc": b.cfg.grpcAddr, "http": b.cfg.edgeURL, "redis": b.cfg.redisAddr,
		"scenarios": strings.Join(cfg.scenarios, ","), "duration": cfg.duration.String(), "callers": strconv.Itoa(cfg.callers),
		"workers": strconv.Itoa(cfg.workers), "pipeline": strconv.Itoa(cfg.pipeline),
	} {
		b.rep.Settings[k] = v
	}
	return b, nil
}

func (b *bench) close() error {
	if b.conn != nil {
		b.conn.Close()
	}
	if b.noopSrv != nil {
		b.noopSrv.close()
	}
	if b.sys != nil {
		return b.sys.stop()
	}
	return nil
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.log, "heraldbench: "+format+"\n", args...)
}

// redisPID asks a Redis on this machine for its process id, so that its CPU
// time can be read too. It returns 0 for a remote or embedded Redis.
func redisPID(ctx context.Context, addr string) int {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return 0
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return 0
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ := strconv.Atoi(v)
			if _, err := readProc(pid); err == nil && pid != os.Getpid() {
				return pid
			}
		}
	}
	return 0
}

// proc finds the process a scenario measures: the one named name, or this
// process with -self, or the only one given.
func (b *bench) proc(name string) (namedPID, bool) {
	for _, p := range b.procs {
		if p.Name == name {
			return p, true
		}
	}
	if b.sys != nil {
		return b.procs[0], true
	}
	if len(b.cfg.pids) == 1 {
		return b.cfg.pids[0], true
	}
	return namedPID{}, false
}

func (b *bench) run(ctx context.Context) (*report, error) {
	if err := b.baselines(ctx); err != nil {
		return b.rep, err
	}
	for _, s := range b.cfg.scenarios {
		var err error
		switch s {
		case "idle":
			if err = b.idle(ctx); err == nil {
				err = b.idleH2(ctx)
			}
		case "unicast":
			err = b.unicast(ctx)
		case "router":
			err = b.router(ctx)
		case "broadcast":
			err = b.broadcast(ctx)
		case "pollpush":
			err = b.pollPush(ctx)
		case "offline":
			err = b.offline(ctx)
		case "notifystream":
			err = b.notifyStream(ctx)
		case "redismem":
			err = b.redisMem(ctx)
		case "scale":
			err = b.scale(ctx)
		}
		if err != nil {
			return b.rep, fmt.Errorf("%s: %w", s, err)
		}
	}
	for _, p := range b.procs {
		if s, err := readProc(p.PID); err == nil {
			b.rep.add("process", p.Name+" RSS at end", float64(s.RSS)/(1<<20), "MiB")
			b.rep.add("process", p.Name+" CPU time", s.CPU.Seconds(), "s")
		}
	}
	return b.rep, nil
}

func (b *bench) baselines(ctx context.Context) error {
	d := b.cfg.baseDuration
	b.progress("baseline: pipelined PUBLISH for %s", d)
	rate, err := baselinePublish(ctx, b.cfg.redisAddr, 4, b.cfg.pipeline, d)
	if err != nil {
		return fmt.Errorf("PUBLISH baseline: %w", err)
	}
	b.publishRate = rate
	b.rep.add("baseline", fmt.Sprintf("Redis PUBLISH, pipelines of %d, 4 clients", b.cfg.pipeline), rate, "msg/s")

	b.progress("baseline: no-op gRPC for %s", d)
	noop, err := b.noopServer(ctx)
	if err != nil {
		return err
	}
	self0, _ := readProc(os.Getpid())
	b.noop = closedLoop(ctx, b.cfg.callers, d, noop.call)
	self1, _ := readProc(os.Getpid())
	if b.noop.Failed > 0 {
		return fmt.Errorf("no-op gRPC baseline: %d failed: %s", b.noop.Failed, b.noop.FirstErr)
	}
	b.noopCPU = float64((self1.CPU - self0.CPU).Microseconds()) / float64(b.noop.Sent)
	b.rep.add("baseline", fmt.Sprintf("no-op gRPC unary, closed loop, %d callers", b.cfg.callers), b.noop.Rate, "call/s")
	b.rep.add("baseline", "no-op gRPC CPU per call (client and server)", b.noopCPU, "µs")
	b.rep.add("baseline", "no-op gRPC round trip p50", ms(b.noop.Latency.quantile(0.5)), "ms")
	b.rep.add("baseline", "no-op gRPC round trip p99", ms(b.noop.Latency.quantile(0.99)), "ms")

	b.progress("baseline: FCM emulator sends for %s", d)
	fb, err := startFCMBaseline(ctx)
	if err != nil {
		return err
	}
	defer fb.close()
	if err := fb.call(ctx, 0, time.Now()); err != nil {
		return fmt.Errorf("FCM baseline: %w", err)
	}
	b.fcm = closedLoop(ctx, min(b.cfg.callers, 16), d, fb.call)
	if b.fcm.Failed > 0 {
		return fmt.Errorf("FCM baseline: %d failed: %s", b.fcm.Failed, b.fcm.FirstErr)
	}
	b.rep.add("baseline", fmt.Sprintf("FCM emulator Send, closed loop, %d callers", min(b.cfg.callers, 16)), b.fcm.Rate, "send/s")
	return nil
}

// fleetAndNoop opens scenario's fleet of -conns streams on prefix, and
// the no-op server its rounds pair with.
func (b *bench) fleetAndNoop(ctx context.Context, scenario, prefix string) (*fleet, *noopGRPC, error) {
	b.progress("%s: opening %d connections", scenario, b.cfg.conns)
	f, err := openFleet(ctx, b.fleetConfig(prefix, b.cfg.conns, ""))
	if err != nil {
		return nil, nil, err
	}
	noop, err := b.noopServer(ctx)
	if err != nil {
		f.close()
		return nil, nil, err
	}
	return f, noop, nil
}

// noopServer is the run's no-op gRPC server, started and called once the
// first time it is asked for.
func (b *bench) noopServer(ctx context.Context) (*noopGRPC, error) {
	if b.noopSrv != nil {
		return b.noopSrv, nil
	}
	noop, err := startNoopGRPC()
	if err != nil {
		return nil, err
	}
	if err := noop.call(ctx, 0, time.Now()); err != nil {
		noop.close()
		return nil, fmt.Errorf("no-op gRPC baseline: %w", err)
	}
	b.noopSrv = noop
	return noop, nil
}

func (b *bench) fleetConfig(prefix string, count int, topic string) fleetConfig {
	loopback := false
	if u, err := url.Parse(b.cfg.edgeURL); err == nil {
		ip := net.ParseIP(u.Hostname())
		loopback = ip != nil && ip.IsLoopback() || u.Hostname() == "localhost"
	}
	return fleetConfig{edge: b.cfg.edgeURL, secret: b.cfg.secret, prefix: prefix, count: count, topic: topic,
		perAddr: b.cfg.perAddr, loopback: loopback, perChild: b.cfg.perChild, dials: b.cfg.dials}
}

// fileRoom is how many more files this process may open, keeping a reserve
// for Redis, gRPC and the children's pipes.
func fileRoom() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1 << 30
	}
	return int(lim.Cur) - openFiles() - 300
}

// freeMemory collects garbage and returns it to the kernel, so that RSS
// readings taken around a step differ by what the step keeps.
func freeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

func (b *bench) idle(ctx context.Context) error {
	n := b.cfg.idleConns
	if b.sys != nil {
		if room := fileRoom(); n > room {
			b.rep.note("idle: %d connections asked, %d held: the edge runs in this process, which may have %d more open files", n, room, room)
			n = room
		}
	}
	edge, haveEdge := b.proc("edge")
	if haveEdge && b.sys != nil {
		freeMemory()
	}
	before, _ := readProc(edge.PID)
	k0 := readKernel()
	b.progress("idle: opening %d connections", n)
	start := time.Now()
	f, err := openFleet(ctx, b.fleetConfig(b.tag+"-idle-", n, ""))
	if err != nil {
		return err
	}
	defer f.close()
	took := time.Since(start)
	time.Sleep(2 * time.Second) // leases written, buffers settled
	if haveEdge && b.sys != nil {
		freeMemory()
	}
	after, _ := readProc(edge.PID)
	k1 := readKernel()
	if b.cfg.memProfile != "" && b.sys != nil {
		if err := writeHeapProfile(b.cfg.memProfile); err != nil {
			return err
		}
	}
	b.rep.add("idle", "connections held", float64(f.conns), "conns")
	b.rep.add("idle", "connections opened a second", float64(f.conns)/took.Seconds(), "conn/s")
	b.rep.add("idle", "child processes", float64(len(f.children)), "procs")
	if haveEdge {
		b.rep.add("idle", "edge RSS growth per connection", float64(after.RSS-before.RSS)/float64(f.conns)/1024, "KiB")
		b.rep.add("idle", "edge RSS with the connections", float64(after.RSS)/(1<<20), "MiB")
	} else {
		b.rep.note("idle: no edge process to read (-pids edge=PID)")
	}
	kern := float64(k1.SUnreclaim-k0.SUnreclaim+k1.TCPMem-k0.TCPMem) / float64(f.conns) / 1024
	b.rep.add("idle", "kernel memory per connection, both ends (est.)", kern, "KiB")
	if b.sys != nil {
		// 2 processes' worth of fds, 2 sockets a connection on one machine.
		b.rep.note("idle: kernel memory is the growth of SUnreclaim (/proc/meminfo) plus TCP buffer pages (/proc/net/sockstat), machine-wide, over the connections opened; both ends are on this machine, so about half is the edge's")
	}
	return nil
}

func notifyData(sched time.Time, i int) []byte {
	b := make([]byte, 0, 48)
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, sched.UnixNano(), 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, int64(i), 10)
	return append(b, '}')
}

// notifier makes call i a Notify to user prefix+(i mod users) through the
// router that the run measures.
func (b *bench) notifier(prefix string, users int) callFunc {
	return notifier(b.client, prefix, users)
}

// notifier makes call i a Notify to user prefix+(i mod users) through
// client, and fails it unless it was routed online.
func notifier(client heraldv1.RouterServiceClient, prefix string, users int) callFunc {
	return func(ctx context.Context, i int, sched time.Time) error {
		resp, err := client.Notify(ctx, &heraldv1.NotifyRequest{
			UserId: prefix + strconv.Itoa(i%users), Event: "bench", Data: notifyData(sched, i)})
		if err == nil && resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
			err = fmt.Errorf("route %s, want online", resp.GetRoute())
		}
		return err
	}
}

// unicast sends Notify open loop at each of -rates over -conns streams, in
// -pairs pairs of rounds: the no-op gRPC call at the same rate, then
// Notify, so that each latency's ratio to the no-op call's is taken over
// the same seconds (pairs.go).
func (b *bench) unicast(ctx context.Context) error {
	prefix := b.tag + "-uni-"
	f, noop, err := b.fleetAndNoop(ctx, "unicast", prefix)
	if err != nil {
		return err
	}
	defer f.close()
	b.rep.add("unicast", "connections held", float64(f.conns), "conns")
	pairs := b.cfg.pairs
	baseD, subjD := roundLength(min(b.cfg.baseDuration, b.cfg.duration), pairs), roundLength(b.cfg.duration, pairs)
	for _, rate := range b.cfg.rates {
		var (
			res, base            loadResult // the rounds together
			recv                 hist       // Notify→receive, the rounds together
			received, allocs     uint64
			cpu                  time.Duration
			baseLat, calls, lats []*hist // per round
		)
		b.progress("unicast: %.0f/s, %d pairs of rounds: the no-op gRPC call for %s, then Notify for %s", rate, pairs, baseD, subjD)
		err := inPairs(ctx, pairs, func(int) error {
			r := openLoop(ctx, rate, baseD, b.cfg.workers, noop.call)
			if r.Failed > 0 {
				return fmt.Errorf("no-op gRPC at %.0f/s: %d failed: %s", rate, r.Failed, r.FirstErr)
			}
			base.addRound(r)
			baseLat = append(baseLat, &r.Latency)
			return nil
		}, func(int) error {
			if err := f.reset(); err != nil {
				return err
			}
			call, end, err := sender(ctx, b.client, b.cfg.stream.use, prefix, f.conns)
			if err != nil {
				return err
			}
			c0, a0 := readSelf(b), heapAllocs()
			r := openLoop(ctx, rate, subjD, b.cfg.workers, call)
			end()
			got, err := f.waitReceived(uint64(r.Sent-r.Failed), 5*time.Second)
			if err != nil {
				return err
			}
			c1, a1 := readSelf(b), heapAllocs()
			cpu, allocs, received = cpu+c1-c0, allocs+a1-a0, received+got.Received
			res.addRound(r)
			recv.merge(got.Latency)
			lat := got.Latency
			if lat == nil {
				lat = &hist{}
			}
			calls, lats = append(calls, &r.Latency), append(lats, lat)
			return nil
		})
		if err != nil {
			return err
		}
		sc := fmt.Sprintf("unicast %s/s", formatValue(rate))
		if b.sys != nil && received > 0 {
			// With -self the process is the router and the edge; the
			// clients are child processes.
			n := float64(received)
			b.rep.add(sc, "process CPU per delivered event (router and edge)", float64(cpu.Nanoseconds())/1e3/n, "µs")
			b.rep.add(sc, "process heap allocations per delivered event (router and edge)", float64(allocs)/n, "objects")
		}
		b.rep.addVs(sc, "sent a second (at send time)", res.Rate, "/s", rate, "target rate")
		b.rep.add(sc, "sent", float64(res.Sent), "calls")
		b.rep.add(sc, "failed", float64(res.Failed), "calls")
		b.rep.add(sc, "abandoned (never sent: the run overran)", float64(res.Abandoned), "calls")
		b.rep.addVs(sc, "delivered", float64(received), "events", float64(res.Sent), "sent")
		if res.FirstErr != "" {
			b.rep.note("%s: first failure: %s", sc, res.FirstErr)
		}
		b.rep.add(sc, "no-op gRPC round trip p50, same rate, in the rounds between", ms(base.Latency.quantile(0.5)), "ms")
		b.rep.addLatencyPaired(sc, "Notify→receive", &recv, latencyRatios(baseLat, lats), "no-op gRPC same rate")
		b.rep.addPaired(sc, "Notify call p99 (from schedule)", ms(res.Latency.quantile(0.99)), "ms",
			latencyRatios(baseLat, calls)[q99], "no-op gRPC same rate")
	}
	return nil
}

// readSelf is the CPU time of the -self process so far, or zero.
func readSelf(b *bench) time.Duration {
	if b.sys == nil {
		return 0
	}
	p, _ := readProc(b.procs[0].PID)
	return p.CPU
}
