package fcm_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// rig is the offline path's real parts: Kafka (kfake), Redis, the FCM
// emulator reached through the real firebase client, and a writer to the
// offline topic standing in for the router.
type rig struct {
	k       *testenv.Kafka
	prefix  string
	devices *delivery.Devices
	emu     *fcmtest.Server
	queue   *delivery.KafkaQueue
	deps    fcm.Deps
}

func newRig(t *testing.T, partitions int) *rig {
	t.Helper()
	k := testenv.StartKafka(t, partitions)
	rdb, prefix := testenv.Redis(t)
	devices, err := delivery.NewDevices(rdb, delivery.DevicesConfig{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	emu := fcmtest.NewServer(t, fcmtest.Config{Project: "herald-test"})
	sender, err := fcm.NewClient(context.Background(), fcm.ClientConfig{Project: "herald-test", Endpoint: emu.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	q, err := delivery.NewKafkaQueue(delivery.KafkaConfig{Brokers: k.Brokers}, delivery.DefaultOfflineTopic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return &rig{k: k, prefix: prefix, devices: devices, emu: emu, queue: q,
		deps: fcm.Deps{Sender: sender, Devices: devices, Redis: rdb}}
}

// config is a worker configuration with test-sized backoffs.
func (r *rig) config() fcm.Config {
	return fcm.Config{
		Kafka:       delivery.KafkaConfig{Brokers: r.k.Brokers},
		RedisPrefix: r.prefix,
		BackoffBase: 100 * time.Millisecond,
		BackoffMax:  400 * time.Millisecond,
	}
}

// start runs a worker until the returned stop is called (or the test ends).
func (r *rig) start(t *testing.T, cfg fcm.Config, reg prometheus.Registerer) (stop func()) {
	t.Helper()
	deps := r.deps
	deps.Registerer = reg
	w, err := fcm.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (r *rig) register(t *testing.T, user string, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		if _, _, err := r.devices.Register(context.Background(), user, tok, "android"); err != nil {
			t.Fatal(err)
		}
	}
}

// notify writes a notification to the offline topic as the router does.
func (r *rig) notify(t *testing.T, user, data string, push *heraldv1.PushOptions) *heraldv1.Envelope {
	t.Helper()
	now := time.Now()
	env := &heraldv1.Envelope{
		Id: delivery.NewID(now), UserId: user, Event: "order.filled", Data: []byte(data),
		AcceptedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		EventId: "7", Push: push,
	}
	if err := r.queue.Enqueue(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	return env
}

func (r *rig) waitPushes(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.emu.WaitFor(ctx, n); err != nil {
		t.Fatalf("emulator recorded %d pushes, want %d: %v", r.emu.Count(), n, err)
	}
}

func (r *rig) deadLetters(t *testing.T) []*heraldv1.DeadLetter {
	t.Helper()
	return testenv.Decode[heraldv1.DeadLetter](t, r.k.ReadAll(delivery.DefaultDeadLetterTopic))
}

func TestWorkerPushesEveryDevice(t *testing.T) {
	t.Parallel()
	r := newRig(t, 3)
	r.register(t, "alice", "tok-alice-phone", "tok-alice-tablet")
	r.register(t, "bob", "tok-bob")
	r.start(t, r.config(), nil)

	a := r.notify(t, "alice", `{"order":1}`, &heraldv1.PushOptions{
		Title: "Order filled", Body: "100 ACME at 12.50", CollapseKey: "orders", Priority: heraldv1.Priority_PRIORITY_HIGH,
	})
	b := r.notify(t, "bob", `{"order":2}`, nil)
	r.waitPushes(t, 3)

	for _, tok := range []string{"tok-alice-phone", "tok-alice-tablet"} {
		got := r.emu.ByToken(tok)
		if len(got) != 1 {
			t.Fatalf("%s got %d pushes, want 1", tok, len(got))
		}
		m, err := got[0].Decode()
		if err != nil {
			t.Fatal(err)
		}
		if m.Data[fcm.DataID] != a.Id || m.Data[fcm.DataPayload] != `{"order":1}` ||
			m.Data[fcm.DataEvent] != "order.filled" || m.Data[fcm.DataEventID] != "7" {
			t.Errorf("%s data %v, want the notification's id, event, event id and payload", tok, m.Data)
		}
		if m.Notification == nil || m.Notification.Title != "Order filled" || m.Notification.Body != "100 ACME at 12.50" {
			t.Errorf("%s notification %+v, want the title and body", tok, m.Notification)
		}
		if m.Android == nil || m.Android.Priority != "high" || m.Android.CollapseKey != "orders" ||
			m.Android.TTL == nil || *m.Android.TTL <= 50*time.Minute || *m.Android.TTL > time.Hour {
			t.Errorf("%s android %+v, want high priority, the collapse key and about an hour of TTL", tok, m.Android)
		}
		if m.APNS == nil || m.APNS.Headers["apns-priority"] != "10" || m.APNS.Headers["apns-collapse-id"] != "orders" {
			t.Errorf("%s apns %+v, want priority 10 and the collapse id", tok, m.APNS)
		}
	}
	got := r.emu.ByToken("tok-bob")
	if len(got) != 1 {
		t.Fatalf("bob got %d pushes, want 1", len(got))
	}
	m, err := got[0].Decode()
	if err != nil {
		t.Fatal(err)
	}
	if m.Data[fcm.DataID] != b.Id || m.Notification != nil || m.Android.Priority != "normal" ||
		m.APNS.Headers["apns-push-type"] != "background" || m.APNS.Headers["apns-priority"] != "5" {
		t.Errorf("bob's data-only push: %+v %+v %+v", m.Data, m.Android, m.APNS)
	}
}

func TestWorkerRemovesDeadTokens(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.emu.Unregister("tok-gone")
	r.emu.InvalidToken("tok-garbage")
	r.register(t, "carol", "tok-gone", "tok-garbage", "tok-good")
	r.register(t, "dan", "tok-dan-gone")
	r.emu.Unregister("tok-dan-gone")
	reg := prometheus.NewPedanticRegistry()
	r.start(t, r.config(), reg)

	r.notify(t, "carol", "x", nil)
	dan := r.notify(t, "dan", "y", nil)
	r.waitPushes(t, 1)
	testenv.WaitFor(t, 10*time.Second, "the dead tokens to be removed", func() bool {
		c, _ := r.devices.List(context.Background(), "carol")
		d, _ := r.devices.List(context.Background(), "dan")
		return len(c) == 1 && c[0].Token == "tok-good" && len(d) == 0
	})
	// dan had only a dead token: nothing reached him, and that is on record.
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 10*time.Second, "dan's dead letter", func() bool {
		dl = r.deadLetters(t)
		return len(dl) == 1
	})
	if dl[0].GetEnvelope().GetId() != dan.Id || dl[0].GetErrorCode() != "UNREGISTERED" {
		t.Fatalf("dead letter %v, want dan's notification with UNREGISTERED", dl[0])
	}
	if got := metricValue(t, reg, "herald_fcm_tokens_removed_total"); got != 3 {
		t.Fatalf("tokens_removed_total = %v, want 3", got)
	}
}

func TestWorkerNoDeviceAndExpiredAreAccounted(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	reg := prometheus.NewPedanticRegistry()
	r.start(t, r.config(), reg)
	env := r.notify(t, "nobody", "x", nil)

	now := time.Now()
	expired := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: "erin",
		AcceptedAt: timestamppb.New(now.Add(-2 * time.Hour)), ExpiresAt: timestamppb.New(now.Add(-time.Hour))}
	r.register(t, "erin", "tok-erin")
	if err := r.queue.Enqueue(context.Background(), expired); err != nil {
		t.Fatal(err)
	}
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 15*time.Second, "the no-device dead letter and the expired count", func() bool {
		dl = r.deadLetters(t)
		return len(dl) == 1 && metricValue(t, reg, "herald_fcm_notifications_total", "expired") == 1
	})
	if dl[0].GetErrorCode() != fcm.CodeNoDevice || dl[0].GetEnvelope().GetId() != env.Id {
		t.Fatalf("dead letter %v, want %s as NO_DEVICE", dl[0], env.Id)
	}
	if n := r.emu.Count(); n != 0 {
		t.Fatalf("emulator got %d pushes; the expired notification must not be pushed", n)
	}
}

func TestWorkerRetriesAfterRetryAfter(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.register(t, "frank", "tok-frank")
	// A quota storm: the first three sends get 429 with Retry-After: 1.
	r.emu.FailNext(3, fcmtest.QuotaExceeded, time.Second)
	r.start(t, r.config(), nil)
	r.notify(t, "frank", "x", nil)
	r.waitPushes(t, 1)

	attempts := r.emu.Attempts("tok-frank")
	if len(attempts) != 4 {
		t.Fatalf("%d attempts, want 3 refused and 1 accepted (no hot loop, no give-up)", len(attempts))
	}
	for i := 1; i < len(attempts); i++ {
		prev, cur := attempts[i-1], attempts[i]
		if prev.Status != 429 {
			t.Fatalf("attempt %d answered %d, want 429", i-1, prev.Status)
		}
		if gap := cur.Received.Sub(prev.Answered); gap < time.Second {
			t.Errorf("attempt %d came %v after a 429 with Retry-After: 1", i, gap)
		}
	}
	if last := attempts[3]; last.Status != 200 {
		t.Fatalf("last attempt answered %d, want 200", last.Status)
	}
}

func TestWorkerRetryBudgetDeadLetters(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.register(t, "gina", "tok-gina")
	r.emu.FailFor(time.Hour, fcmtest.Internal, 0)
	cfg := r.config()
	cfg.MaxAttempts = 3
	r.start(t, cfg, nil)
	env := r.notify(t, "gina", "x", nil)

	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 20*time.Second, "the dead letter", func() bool {
		dl = r.deadLetters(t)
		return len(dl) == 1
	})
	d := dl[0]
	if d.GetErrorCode() != "INTERNAL" || d.GetAttempts() != 3 || d.GetEnvelope().GetId() != env.Id ||
		!d.GetLastFailureAt().AsTime().After(d.GetFirstFailureAt().AsTime()) {
		t.Fatalf("dead letter %v, want INTERNAL after 3 attempts, with first and last failure times", d)
	}
	if n := len(r.emu.Attempts("tok-gina")); n != 3 {
		t.Fatalf("%d attempts, want exactly 3", n)
	}
}

func TestWorkerPermanentErrorDeadLetters(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.register(t, "hal", "tok-hal")
	r.emu.FailNext(1, fcmtest.ThirdPartyAuthError, 0)
	r.start(t, r.config(), nil)
	env := r.notify(t, "hal", "x", nil)
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 15*time.Second, "the dead letter", func() bool {
		dl = r.deadLetters(t)
		return len(dl) == 1
	})
	if dl[0].GetErrorCode() != "THIRD_PARTY_AUTH_ERROR" || dl[0].GetEnvelope().GetId() != env.Id || dl[0].GetAttempts() != 1 {
		t.Fatalf("dead letter %v, want a THIRD_PARTY_AUTH_ERROR after 1 attempt", dl[0])
	}
	if n := len(r.emu.Attempts("tok-hal")); n != 1 {
		t.Fatalf("%d attempts; a permanent error must not be retried", n)
	}
}

// TestWorkerCrashLosesNothing stops a worker in the middle of a stream of
// notifications (its batch in hand unfinished and uncommitted where the
// drain is cut) and starts another: every notification is pushed at least
// once.
func TestWorkerCrashLosesNothing(t *testing.T) {
	t.Parallel()
	r := newRig(t, 3)
	const users, per = 20, 10
	for u := range users {
		r.register(t, "u"+strconv.Itoa(u), "tok-"+strconv.Itoa(u))
	}
	r.emu.SetLatency(2*time.Millisecond, time.Millisecond)
	cfg := r.config()
	cfg.BatchSize = 7
	stop := r.start(t, cfg, nil)

	var ids []string
	for i := range per {
		for u := range users {
			ids = append(ids, r.notify(t, "u"+strconv.Itoa(u), strconv.Itoa(i), nil).Id)
		}
		if i == per/2 {
			testenv.WaitFor(t, 20*time.Second, "some pushes before the crash", func() bool { return r.emu.Count() > 0 })
			stop()
		}
	}
	r.start(t, cfg, nil)
	testenv.WaitFor(t, 60*time.Second, "every notification pushed", func() bool {
		got := map[string]bool{}
		for _, m := range r.emu.Messages() {
			got[m.Data[fcm.DataID]] = true
		}
		for _, id := range ids {
			if !got[id] {
				return false
			}
		}
		return true
	})
	if n := r.emu.Count(); n < len(ids) {
		t.Fatalf("%d pushes for %d notifications", n, len(ids))
	}
}

func TestWorkerDedupesRedelivery(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.register(t, "ivan", "tok-ivan")
	r.start(t, r.config(), nil)
	env := r.notify(t, "ivan", "x", nil)
	r.waitPushes(t, 1)
	// The same record again, as after a crash before the commit.
	if err := r.queue.Enqueue(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	marker := r.notify(t, "ivan", "after", nil)
	r.waitPushes(t, 2)
	var ids []string
	for _, m := range r.emu.Messages() {
		ids = append(ids, m.Data[fcm.DataID])
	}
	if !slices.Equal(ids, []string{env.Id, marker.Id}) {
		t.Fatalf("pushed %v, want %s once then %s", ids, env.Id, marker.Id)
	}
}

// metricValue is the value of the counter or gauge name with labels, or 0.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var values []string
			for _, lp := range m.GetLabel() {
				values = append(values, lp.GetValue())
			}
			if slices.Equal(values, labels) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}
