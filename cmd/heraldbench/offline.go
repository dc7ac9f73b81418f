package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// optionalScenarios run only when -scenario names them.
var optionalScenarios = []string{"offline"}

// offlineConfig is the offline scenario's flags.
type offlineConfig struct {
	users       int
	backlog     int
	rate        float64
	partitions  int
	concurrency int
	conns       int
	quota       int
	latency     time.Duration
	jitter      time.Duration
	h2c         bool
}

func offlineFlags(fs *flag.FlagSet, c *offlineConfig) {
	fs.IntVar(&c.users, "offline-users", 5000, "offline scenario: offline users, one device each")
	fs.IntVar(&c.backlog, "offline-backlog", 50000, "offline scenario: notifications queued through the router before the worker starts; the worker's drain of them is its throughput")
	fs.Float64Var(&c.rate, "offline-rate", 1000, "offline scenario: Notify a second, open loop for -duration, with the worker running: the hand-off latencies")
	fs.IntVar(&c.partitions, "offline-partitions", 12, "offline scenario: partitions of the Kafka topics")
	fs.IntVar(&c.concurrency, "offline-concurrency", 8, "offline scenario: the worker's -concurrency")
	fs.IntVar(&c.conns, "offline-conns", 4, "offline scenario: the worker's -fcm-conns")
	fs.IntVar(&c.quota, "offline-quota", 600000, "offline scenario: the FCM project quota, messages a minute, enforced by the emulator and given to the worker")
	fs.DurationVar(&c.latency, "offline-latency", 30*time.Millisecond, "offline scenario: the emulator's latency per send")
	fs.DurationVar(&c.jitter, "offline-jitter", 10*time.Millisecond, "offline scenario: the emulator's latency jitter, either way")
	fs.BoolVar(&c.h2c, "offline-h2c", false, "offline scenario: the worker speaks HTTP/2 (h2c) to the emulator, as to FCM, instead of HTTP/1.1")
}

// offline measures the offline path: Notify for users with a device and no
// connection, through the router, Kafka (kfake, in this process) and an FCM
// worker (a child process, so that its CPU is its own), to the FCM emulator
// with the project quota and FCM-like latency. It needs -self.
func (b *bench) offline(ctx context.Context) error {
	const sc = "offline"
	c := b.cfg.offline
	if b.sys == nil {
		b.rep.note("offline: skipped: it runs only with -self (Kafka, the worker and the emulator in heraldbench)")
		return nil
	}
	rig, err := startOfflineRig(ctx, b.sys.redisAddr, b.tag, c, b.cfg.duration)
	if err != nil {
		return err
	}
	defer rig.close()
	b.progress("offline: registering %d devices", c.users)
	if err := rig.register(ctx, c.users); err != nil {
		return err
	}

	// The backlog, through the router, with no worker yet.
	b.progress("offline: queueing %d notifications through the router, %d callers", c.backlog, b.cfg.callers)
	res := closedCount(ctx, b.cfg.callers, c.backlog, rig.notifier(c.users))
	if res.Failed > 0 {
		return fmt.Errorf("offline: %d of %d Notify failed: %s", res.Failed, res.Sent, res.FirstErr)
	}
	b.rep.add(sc, fmt.Sprintf("Notify a second, offline route, closed loop, %d callers", b.cfg.callers), res.Rate, "/s")
	b.rep.add(sc, "Notify round trip p99 (router accepted → Kafka acks=all)", ms(res.Latency.quantile(0.99)), "ms")

	// The worker drains it.
	rig.emu.Reset()
	b.progress("offline: starting the FCM worker; it drains the backlog")
	w, err := startWorkerChild(ctx, rig.spec)
	if err != nil {
		return err
	}
	defer w.stop()
	d, err := rig.drain(ctx, w.pid, c.backlog)
	if err != nil {
		return err
	}
	st := rig.emu.Stats()
	b.rep.add(sc, "pushes a second, worker draining the backlog (steady, after the first second)", d.rate, "/s")
	b.rep.addVs(sc, "pushes accepted by FCM", float64(d.pushed), "pushes", float64(c.backlog), "queued")
	b.rep.add(sc, "429 QUOTA_EXCEEDED answers", float64(st.Errors[fcmtest.QuotaExceeded]), "answers")
	b.rep.add(sc, "worker CPU while draining (steady)", d.cores, "core-s/s")
	if d.rate > 0 {
		b.rep.add(sc, "worker CPU per push", d.cores/d.rate*1e6, "µs")
	}
	b.rep.add(sc, "heraldbench CPU while draining (FCM emulator, Kafka; steady)", d.self, "core-s/s")
	if d.pushed < c.backlog {
		b.rep.note("offline: the worker pushed %d of %d within the time allowed", d.pushed, c.backlog)
	}

	// The hand-off at a steady rate, the worker keeping up.
	rig.emu.Reset()
	h0, err := w.handoff()
	if err != nil {
		return err
	}
	b.progress("offline: %.0f Notify/s for %s, the worker running", c.rate, b.cfg.duration)
	ol := openLoop(ctx, c.rate, b.cfg.duration, b.cfg.workers, rig.notifier(c.users))
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	werr := rig.emu.WaitFor(wctx, ol.Sent-ol.Failed)
	cancel()
	h1, err := w.handoff()
	if err != nil {
		return err
	}
	rsc := fmt.Sprintf("offline %s/s", formatValue(c.rate))
	b.rep.addVs(rsc, "Notify sent a second (at send time)", ol.Rate, "/s", c.rate, "target rate")
	b.rep.add(rsc, "failed", float64(ol.Failed), "calls")
	b.rep.addVs(rsc, "pushes accepted by FCM", float64(rig.emu.Count()), "pushes", float64(ol.Sent-ol.Failed), "sent")
	b.rep.add(rsc, "429 QUOTA_EXCEEDED answers", float64(rig.emu.Stats().Errors[fcmtest.QuotaExceeded]), "answers")
	b.rep.add(rsc, "Notify call p99, from schedule (router accepted → Kafka acks=all)", ms(ol.Latency.quantile(0.99)), "ms")
	hd := h1.minus(h0)
	b.rep.add(rsc, "Kafka hand-off p50 (router accepted → worker fetched)", ms(hd.quantile(0.5)), "ms")
	b.rep.add(rsc, "Kafka hand-off p99 (router accepted → worker fetched)", ms(hd.quantile(0.99)), "ms")
	b.rep.addLatency(rsc, "Notify→FCM accepted", rig.pushLatency(), nil, "")
	if werr != nil {
		b.rep.note("%s: %d of %d pushes arrived: %v", rsc, rig.emu.Count(), ol.Sent-ol.Failed, werr)
	}
	if ol.FirstErr != "" {
		b.rep.note("%s: first failure: %s", rsc, ol.FirstErr)
	}
	b.rep.note("offline: Kafka hand-off is the time from the router's acceptance of a Notify (the envelope's accepted_at) to the worker's fetch of the record (herald_fcm_handoff_seconds, buckets interpolated); FCM emulator latency %s ± %s, quota %d/min; worker: concurrency %d, %d FCM clients, h2c %v",
		c.latency, c.jitter, c.quota, c.concurrency, c.conns, c.h2c)
	for k, v := range map[string]string{"offline-users": strconv.Itoa(c.users), "offline-backlog": strconv.Itoa(c.backlog),
		"offline-rate": formatValue(c.rate), "offline-concurrency": strconv.Itoa(c.concurrency), "offline-conns": strconv.Itoa(c.conns),
		"offline-quota": strconv.Itoa(c.quota), "offline-latency": c.latency.String(), "offline-jitter": c.jitter.String(),
		"offline-partitions": strconv.Itoa(c.partitions), "offline-h2c": strconv.FormatBool(c.h2c)} {
		b.rep.Settings[k] = v
	}
	return w.stop()
}

// offlineRig is the offline path's parts in heraldbench: Kafka, the
// emulator, and a router whose offline route writes to that Kafka.
type offlineRig struct {
	kf     *kfake.Cluster
	emu    *fcmtest.Server
	rdb    redis.UniversalClient
	prefix string
	queue  *queue.Kafka
	conn   *grpc.ClientConn
	client heraldv1.RouterServiceClient
	cancel context.CancelFunc
	served chan error
	spec   workerSpec
}

func startOfflineRig(ctx context.Context, redisAddr, tag string, c offlineConfig, d time.Duration) (r *offlineRig, err error) {
	r = &offlineRig{prefix: "heraldbench:" + tag + ":off:"}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	r.kf, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(time.Second), kfake.SeedTopics(int32(c.partitions),
		queue.DefaultOfflineTopic, queue.DefaultRetryTopic, queue.DefaultDeadLetterTopic))
	if err != nil {
		return r, fmt.Errorf("kfake: %w", err)
	}
	r.emu, err = fcmtest.New(fcmtest.Config{Project: "heraldbench", QuotaPerMinute: c.quota, Latency: c.latency, Jitter: c.jitter,
		// The drain is counted; only the steady rate's pushes are read back.
		MaxRecords: int(c.rate*d.Seconds()) + 1000})
	if err != nil {
		return r, err
	}
	if err := r.emu.Start(); err != nil {
		return r, err
	}
	r.rdb = daemon.NewRedis(redisAddr, "")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pres, err := presence.New(r.rdb, presence.Config{Prefix: r.prefix})
	if err != nil {
		return r, err
	}
	brokers := r.kf.ListenAddrs()
	r.queue, err = queue.NewKafka(queue.Config{Brokers: brokers}, queue.DefaultOfflineTopic)
	if err != nil {
		return r, err
	}
	pub, err := delivery.NewPublisher(r.rdb, pres, delivery.PublisherConfig{Offline: r.queue})
	if err != nil {
		return r, err
	}
	devices, err := devices.New(r.rdb, devices.Config{Prefix: r.prefix})
	if err != nil {
		return r, err
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Devices: devices, Logger: log})
	if err != nil {
		return r, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return r, err
	}
	sctx, cancel := context.WithCancel(ctx)
	r.cancel, r.served = cancel, make(chan error, 1)
	go func() { r.served <- svc.Serve(sctx, lis) }()
	r.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return r, err
	}
	r.client = heraldv1.NewRouterServiceClient(r.conn)
	r.spec = workerSpec{Brokers: brokers, Redis: redisAddr, Prefix: r.prefix, Endpoint: r.emu.Endpoint(),
		Concurrency: c.concurrency, Conns: c.conns, Quota: c.quota, H2C: c.h2c, Partitions: c.partitions}
	return r, nil
}

func (r *offlineRig) close() {
	if r.conn != nil {
		r.conn.Close()
	}
	if r.cancel != nil {
		r.cancel()
		<-r.served
	}
	if r.queue != nil {
		r.queue.Close()
	}
	if r.emu != nil {
		r.emu.Close()
	}
	if r.kf != nil {
		r.kf.Close()
	}
	if r.rdb != nil {
		// The run's keys: devices, history, trails, dedupe sets.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = forEachMaster(ctx, r.rdb, func(ctx context.Context, c *redis.Client) error {
			iter := c.Scan(ctx, 0, r.prefix+"*", 1000).Iterator()
			var keys []string
			for iter.Next(ctx) {
				if keys = append(keys, iter.Val()); len(keys) == 500 {
					c.Unlink(ctx, keys...)
					keys = keys[:0]
				}
			}
			if len(keys) > 0 {
				c.Unlink(ctx, keys...)
			}
			return iter.Err()
		})
		r.rdb.Close()
	}
}

// forEachMaster runs fn on each master of a cluster, or on the one Redis.
func forEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return errors.New("unknown redis client")
}

func offlineUser(i, users int) string { return "off-" + strconv.Itoa(i%users) }

// register gives each user one android device, 32 at a time.
func (r *offlineRig) register(ctx context.Context, users int) error {
	var next atomic.Int64
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < users; i = int(next.Add(1)) - 1 {
				u := offlineUser(i, users)
				if _, err := r.client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: u, Token: "tok-" + u,
					Platform: heraldv1.Platform_PLATFORM_ANDROID}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (r *offlineRig) notifier(users int) callFunc {
	return func(ctx context.Context, i int, sched time.Time) error {
		resp, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: offlineUser(i, users), Event: "bench", Data: notifyData(sched, i)})
		if err == nil && resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
			err = fmt.Errorf("route %s, want push queued", resp.GetRoute())
		}
		return err
	}
}

// drained is the worker's drain of the backlog.
type drained struct {
	pushed int
	rate   float64 // pushes a second, over the steady window
	cores  float64 // the worker's CPU seconds a second over the same window
	self   float64 // this process's (the emulator's, Kafka's) over the same window
}

// steadyAfter is how long after the first push the steady window starts:
// the worker's quota lets one second's worth go at once, which would
// flatter the rate.
const steadyAfter = time.Second

// drain waits until the emulator has n pushes (or they stop coming), and
// measures the rate and the CPU over the steady window: from steadyAfter
// after the first push to the last push.
func (r *offlineRig) drain(ctx context.Context, pid, n int) (drained, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var (
		first, t0, tLast time.Time
		c0, s0           procSample
		n0, last         int
		lastMoved        = time.Now()
		patience         = 30 * time.Second // for the first push: the group joins
	)
	for {
		select {
		case <-ctx.Done():
			return drained{}, ctx.Err()
		case <-tick.C:
		}
		now := time.Now()
		cnt := r.emu.Count()
		if cnt > last {
			last, lastMoved, tLast = cnt, now, now
		}
		if first.IsZero() && cnt > 0 {
			first, patience = now, 10*time.Second // without progress
		}
		if t0.IsZero() && !first.IsZero() && now.Sub(first) >= steadyAfter && cnt < n {
			var err error
			if c0, err = readProc(pid); err != nil {
				return drained{}, err
			}
			s0, _ = readProc(os.Getpid())
			t0, n0 = now, cnt
		}
		if cnt >= n || now.Sub(lastMoved) > patience {
			break
		}
	}
	if first.IsZero() {
		return drained{}, errors.New("offline: the worker pushed nothing")
	}
	if t0.IsZero() || !tLast.After(t0) {
		return drained{pushed: last}, errors.New("offline: the backlog drained within the first second; make -offline-backlog larger")
	}
	c1, err := readProc(pid)
	if err != nil {
		return drained{}, err
	}
	s1, _ := readProc(os.Getpid())
	// The CPU readings end a tick after the last push at most.
	wall := time.Since(t0).Seconds()
	return drained{pushed: last, rate: float64(last-n0) / tLast.Sub(t0).Seconds(),
		cores: (c1.CPU - c0.CPU).Seconds() / wall, self: (s1.CPU - s0.CPU).Seconds() / wall}, nil
}

// pushLatency is the time from each Notify's scheduled time to the
// emulator's receipt of its push.
func (r *offlineRig) pushLatency() *hist {
	var h hist
	for _, m := range r.emu.Messages() {
		var p struct {
			T int64 `json:"t"`
		}
		if json.Unmarshal([]byte(m.Data[fcm.DataPayload]), &p) == nil && p.T > 0 {
			h.record(m.Received.Sub(time.Unix(0, p.T)))
		}
	}
	return &h
}

// workerChildFlag, as the first argument, makes heraldbench an FCM worker
// for the offline scenario: it reads a workerSpec line on its standard
// input, runs the worker, answers each further line with its hand-off
// histogram, and stops when its input closes.
const workerChildFlag = "-heraldbench-fcmworker"

type workerSpec struct {
	Brokers     []string
	Redis       string
	Prefix      string
	Endpoint    string
	Concurrency int
	Conns       int
	Quota       int
	H2C         bool
	Partitions  int
}

// buckets is a snapshot of a Prometheus histogram: upper bounds and
// cumulative counts, the last one +Inf.
type buckets struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
}

func (b buckets) minus(o buckets) buckets {
	out := buckets{Bounds: b.Bounds, Counts: make([]uint64, len(b.Counts))}
	for i := range b.Counts {
		out.Counts[i] = b.Counts[i]
		if i < len(o.Counts) {
			out.Counts[i] -= o.Counts[i]
		}
	}
	return out
}

// quantile interpolates within the bucket that holds q; past the last
// bound it returns the last bound.
func (b buckets) quantile(q float64) time.Duration {
	if len(b.Counts) == 0 || b.Counts[len(b.Counts)-1] == 0 {
		return 0
	}
	want := q * float64(b.Counts[len(b.Counts)-1])
	lo, prev := 0.0, uint64(0)
	for i, c := range b.Counts {
		if float64(c) >= want {
			if i >= len(b.Bounds) {
				return time.Duration(b.Bounds[len(b.Bounds)-1] * float64(time.Second))
			}
			frac := 0.0
			if c > prev {
				frac = (want - float64(prev)) / float64(c-prev)
			}
			return time.Duration((lo + frac*(b.Bounds[i]-lo)) * float64(time.Second))
		}
		if i < len(b.Bounds) {
			lo = b.Bounds[i]
		}
		prev = c
	}
	return time.Duration(math.Inf(1))
}

// workerChild is the parent's handle on the worker process.
type workerChild struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	pid  int
	once sync.Once
	err  error
}

func startWorkerChild(ctx context.Context, spec workerSpec) (*workerChild, error) {
	cmd, in, out, err := reexec(ctx, workerChildFlag)
	if err != nil {
		return nil, err
	}
	w := &workerChild{cmd: cmd, in: in, out: bufio.NewScanner(out), pid: cmd.Process.Pid}
	if err := json.NewEncoder(in).Encode(spec); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

func (w *workerChild) handoff() (buckets, error) {
	var b buckets
	if _, err := io.WriteString(w.in, "handoff\n"); err != nil {
		return b, err
	}
	if !w.out.Scan() {
		return b, fmt.Errorf("worker: no answer: %v", w.out.Err())
	}
	return b, json.Unmarshal(w.out.Bytes(), &b)
}

// stop closes the worker's input, which stops it, and waits for it.
func (w *workerChild) stop() error {
	w.once.Do(func() {
		w.in.Close()
		w.err = w.cmd.Wait()
	})
	return w.err
}

// runWorkerChild is the worker process.
func runWorkerChild(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	if !sc.Scan() {
		return errors.New("no spec")
	}
	var spec workerSpec
	if err := json.Unmarshal(sc.Bytes(), &spec); err != nil {
		return err
	}
	stop, err := startCPUProfile(os.Getenv("HERALDBENCH_WORKER_CPUPROFILE"))
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	rdb := daemon.NewRedis(spec.Redis, "")
	defer rdb.Close()
	devices, err := devices.New(rdb, devices.Config{Prefix: spec.Prefix})
	if err != nil {
		return err
	}
	sender, err := fcm.NewSender(ctx, fcm.ClientConfig{Project: "heraldbench", Endpoint: spec.Endpoint, Conns: spec.Conns, H2C: spec.H2C})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	w, err := fcm.New(fcm.Config{Kafka: queue.Config{Brokers: spec.Brokers}, RedisPrefix: spec.Prefix,
		Concurrency: spec.Concurrency, QuotaPerMinute: spec.Quota, SessionTimeout: time.Second},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var b buckets
		mfs, err := reg.Gather()
		if err != nil {
			return err
		}
		for _, mf := range mfs {
			if mf.GetName() != "herald_fcm_handoff_seconds" {
				continue
			}
			h := mf.GetMetric()[0].GetHistogram()
			for _, bk := range h.GetBucket() {
				b.Bounds = append(b.Bounds, bk.GetUpperBound())
				b.Counts = append(b.Counts, bk.GetCumulativeCount())
			}
			b.Counts = append(b.Counts, h.GetSampleCount())
		}
		if err := enc.Encode(b); err != nil {
			return err
		}
	}
	cancel()
	return <-done
}
