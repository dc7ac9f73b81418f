package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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

// The offline scenario's rig: Kafka, the emulator and a router in this
// process, the users' devices, the Notify calls, and the measure of the
// worker's drain.

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
	r.conn, err = grpc.NewClient(lis.Addr().String(), append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return r, err
	}
	r.client = heraldv1.NewRouterServiceClient(r.conn)
	r.spec = workerSpec{Brokers: brokers, Redis: redisAddr, Prefix: r.prefix, Endpoint: r.emu.Endpoint(),
		Concurrency: c.concurrency, Conns: c.conns, Quota: c.quota, H2C: c.h2c, Partitions: c.partitions, GOGC: c.gogc, GOMAXPROCS: c.gomaxprocs}
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
