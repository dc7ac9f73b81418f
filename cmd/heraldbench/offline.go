package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// optionalScenarios run only when -scenario names them.
var optionalScenarios = []string{"offline", "notifystream"}

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
	gogc        int
	gomaxprocs  int
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
	fs.BoolVar(&c.h2c, "offline-h2c", true, "offline scenario: the worker speaks HTTP/2 (h2c) to the emulator, as to FCM; false for HTTP/1.1")
	fs.IntVar(&c.gogc, "offline-gogc", 300, "offline scenario: the worker's GOGC, as docs/deploy/fcmworker.yaml sets it (100 is Go's default); 0 leaves the environment's")
	fs.IntVar(&c.gomaxprocs, "offline-gomaxprocs", 0, "offline scenario: the worker's GOMAXPROCS (1 caps it at one core; see docs/deploy.md, \"Low rates\"); 0 leaves the environment's")
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
	b.rep.note("offline: Kafka hand-off is the time from the router's acceptance of a Notify (the envelope's accepted_at) to the worker's fetch of the record (herald_fcm_handoff_seconds, buckets interpolated); FCM emulator latency %s ± %s, quota %d/min; worker: concurrency %d, %d FCM clients, h2c %v, GOGC %d, GOMAXPROCS %d (0: the environment's)",
		c.latency, c.jitter, c.quota, c.concurrency, c.conns, c.h2c, c.gogc, c.gomaxprocs)
	for k, v := range map[string]string{"offline-users": strconv.Itoa(c.users), "offline-backlog": strconv.Itoa(c.backlog),
		"offline-rate": formatValue(c.rate), "offline-concurrency": strconv.Itoa(c.concurrency), "offline-conns": strconv.Itoa(c.conns),
		"offline-quota": strconv.Itoa(c.quota), "offline-latency": c.latency.String(), "offline-jitter": c.jitter.String(),
		"offline-partitions": strconv.Itoa(c.partitions), "offline-h2c": strconv.FormatBool(c.h2c),
		"offline-gogc": strconv.Itoa(c.gogc), "offline-gomaxprocs": strconv.Itoa(c.gomaxprocs)} {
		b.rep.Settings[k] = v
	}
	return w.stop()
}
