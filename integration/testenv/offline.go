package testenv

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Offline is the offline path's real parts for one test: Kafka (kfake),
// Redis under the test's prefix, the FCM emulator reached through the real
// firebase client, and a writer to the offline topic like the router's.
type Offline struct {
	Kafka    *Kafka
	Redis    redis.UniversalClient
	Prefix   string
	Devices  *devices.Registry
	Emulator *fcmtest.Server
	Queue    *queue.Kafka
	// Deps are the dependencies a worker needs, without a Registerer.
	Deps fcm.Deps
}

// StartOffline starts the parts, with topics of partitions partitions, on
// the shared redis-server.
func StartOffline(tb testing.TB, partitions int) *Offline {
	tb.Helper()
	rdb, prefix := Redis(tb)
	return StartOfflineOn(tb, partitions, rdb, prefix)
}

// StartOfflineOn starts the parts on rdb under prefix.
func StartOfflineOn(tb testing.TB, partitions int, rdb redis.UniversalClient, prefix string) *Offline {
	tb.Helper()
	k := StartKafka(tb, partitions)
	devices, err := devices.New(rdb, devices.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	emu := fcmtest.NewServer(tb, fcmtest.Config{Project: "herald-test"})
	sender, err := fcm.NewClient(context.Background(), fcm.ClientConfig{Project: "herald-test", Endpoint: emu.Endpoint()})
	if err != nil {
		tb.Fatal(err)
	}
	q, err := queue.NewKafka(queue.Config{Brokers: k.Brokers}, queue.DefaultOfflineTopic)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { q.Close() })
	return &Offline{Kafka: k, Redis: rdb, Prefix: prefix, Devices: devices, Emulator: emu, Queue: q,
		Deps: fcm.Deps{Sender: sender, Devices: devices, Redis: rdb}}
}

// WorkerConfig is a worker configuration for these parts, with backoffs
// sized for tests.
func (o *Offline) WorkerConfig() fcm.Config {
	return fcm.Config{
		Kafka:       queue.Config{Brokers: o.Kafka.Brokers},
		RedisPrefix: o.Prefix,
		BackoffBase: 100 * time.Millisecond,
		BackoffMax:  400 * time.Millisecond,
		// A killed worker's partitions move on quickly.
		SessionTimeout: time.Second,
	}
}

// StartWorker runs a worker until the returned stop is called, or the test
// ends. Its metrics go to reg, when not nil.
func (o *Offline) StartWorker(tb testing.TB, cfg fcm.Config, reg prometheus.Registerer) (stop func()) {
	tb.Helper()
	deps := o.Deps
	deps.Registerer = reg
	w, err := fcm.New(cfg, deps)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("worker: %v", err)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

// Register registers tokens for user, as android devices.
func (o *Offline) Register(tb testing.TB, user string, tokens ...string) {
	tb.Helper()
	for _, tok := range tokens {
		if _, _, err := o.Devices.Register(context.Background(), user, tok, "android"); err != nil {
			tb.Fatal(err)
		}
	}
}

// Notify writes a notification to the offline topic as the router does.
func (o *Offline) Notify(tb testing.TB, user, data string, push *heraldv1.PushOptions) *heraldv1.Envelope {
	tb.Helper()
	now := time.Now()
	env := &heraldv1.Envelope{
		Id: delivery.NewID(now), UserId: user, Event: "order.filled", Data: []byte(data),
		AcceptedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		EventId: "7", Push: push,
	}
	if err := o.Queue.Enqueue(context.Background(), env); err != nil {
		tb.Fatal(err)
	}
	return env
}

// WaitPushes waits until the emulator has accepted n pushes.
func (o *Offline) WaitPushes(tb testing.TB, n int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := o.Emulator.WaitFor(ctx, n); err != nil {
		tb.Fatalf("emulator recorded %d pushes, want %d: %v", o.Emulator.Count(), n, err)
	}
}

// WorkerGroup is the consumer group of the offline topic for a worker with
// fcm.Config's default GroupID, which WorkerConfig keeps; the worker
// consumes the retry topic as WorkerGroup + ".retry".
const WorkerGroup = "herald-fcm"

// Backlog returns the records of the offline and retry topics that the
// worker's groups have not committed, by topic and partition: what is still
// queued. Empty means the workers have handled everything written so far.
func (o *Offline) Backlog(tb testing.TB) map[string]map[int]Span {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]map[int]Span{}
	for topic, group := range map[string]string{queue.DefaultOfflineTopic: WorkerGroup, queue.DefaultRetryTopic: WorkerGroup + ".retry"} {
		// A broker restarted by a fault test can fail the first request on
		// a connection it dropped: ask again until the deadline.
		spans, err := o.Kafka.Uncommitted(ctx, group, topic)
		for err != nil && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			spans, err = o.Kafka.Uncommitted(ctx, group, topic)
		}
		if err != nil {
			tb.Fatalf("backlog: %v", err)
		}
		if len(spans) > 0 {
			out[topic] = spans
		}
	}
	return out
}

// DeadLetters reads the dead-letter topic.
func (o *Offline) DeadLetters(tb testing.TB) []*heraldv1.DeadLetter {
	tb.Helper()
	return Decode[heraldv1.DeadLetter](tb, o.Kafka.ReadAll(queue.DefaultDeadLetterTopic))
}

// WaitDeadLetters waits until the dead-letter topic holds n records.
func (o *Offline) WaitDeadLetters(tb testing.TB, n int) []*heraldv1.DeadLetter {
	tb.Helper()
	var dl []*heraldv1.DeadLetter
	WaitFor(tb, 30*time.Second, strconv.Itoa(n)+" dead letters", func() bool {
		dl = o.DeadLetters(tb)
		return len(dl) >= n
	})
	return dl
}

// ChildWorkerEnv makes a test binary a worker process (see RunChildWorker),
// configured by the variable's JSON value, so that a test can kill it with
// SIGKILL.
const ChildWorkerEnv = "HERALD_TEST_CHILD_WORKER"

type childWorker struct {
	Brokers  []string
	Redis    string
	Prefix   string
	Endpoint string
}

// RunChildWorker runs a worker until the process is killed, when the
// environment asks for one; it reports whether it did. Call it first in
// TestMain.
func RunChildWorker() bool {
	spec := os.Getenv(ChildWorkerEnv)
	if spec == "" {
		return false
	}
	var c childWorker
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: c.Redis})
	devices, err := devices.New(rdb, devices.Config{Prefix: c.Prefix})
	if err != nil {
		panic(err)
	}
	sender, err := fcm.NewClient(context.Background(), fcm.ClientConfig{Project: "herald-test", Endpoint: c.Endpoint})
	if err != nil {
		panic(err)
	}
	w, err := fcm.New(fcm.Config{Kafka: queue.Config{Brokers: c.Brokers}, RedisPrefix: c.Prefix, BatchSize: 7,
		SessionTimeout: time.Second, BackoffBase: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb})
	if err != nil {
		panic(err)
	}
	if err := w.Run(context.Background()); err != nil {
		panic(err)
	}
	return true
}

// StartChildWorker starts a worker in a child process (the test binary,
// whose TestMain calls RunChildWorker), killed at cleanup if still running.
func (o *Offline) StartChildWorker(tb testing.TB) *exec.Cmd {
	tb.Helper()
	single, ok := o.Redis.(*redis.Client)
	if !ok {
		tb.Fatal("testenv: a child worker runs against a single Redis only")
	}
	spec, _ := json.Marshal(childWorker{Brokers: o.Kafka.Brokers, Redis: single.Options().Addr, Prefix: o.Prefix,
		Endpoint: o.Emulator.Endpoint()})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), ChildWorkerEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}
