package fcm_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"syscall"
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

func newRig(t *testing.T, partitions int) *testenv.Offline {
	t.Helper()
	return testenv.StartOffline(t, partitions)
}

func TestWorkerPushesEveryDevice(t *testing.T) {
	t.Parallel()
	r := newRig(t, 3)
	r.Register(t, "alice", "tok-alice-phone")
	if _, _, err := r.Devices.Register(context.Background(), "alice", "tok-alice-tablet", "ios"); err != nil {
		t.Fatal(err)
	}
	r.Register(t, "bob", "tok-bob")
	r.StartWorker(t, r.WorkerConfig(), nil)

	a := r.Notify(t, "alice", `{"order":1}`, &heraldv1.PushOptions{
		Title: "Order filled", Body: "100 ACME at 12.50", CollapseKey: "orders", Priority: heraldv1.Priority_PRIORITY_HIGH,
	})
	b := r.Notify(t, "bob", `{"order":2}`, nil)
	r.WaitPushes(t, 3)

	for _, tok := range []string{"tok-alice-phone", "tok-alice-tablet"} {
		got := r.Emulator.ByToken(tok)
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
		// Each device gets its own platform's options, and no other's.
		if m.Webpush != nil {
			t.Errorf("%s webpush %+v, want none", tok, m.Webpush)
		}
		if tok == "tok-alice-phone" {
			if m.Android == nil || m.Android.Priority != "high" || m.Android.CollapseKey != "orders" ||
				m.Android.TTL == nil || *m.Android.TTL <= 50*time.Minute || *m.Android.TTL > time.Hour {
				t.Errorf("%s android %+v, want high priority, the collapse key and about an hour of TTL", tok, m.Android)
			}
			if m.APNS != nil {
				t.Errorf("%s apns %+v, want none on android", tok, m.APNS)
			}
			continue
		}
		if m.APNS == nil || m.APNS.Headers["apns-priority"] != "10" || m.APNS.Headers["apns-collapse-id"] != "orders" {
			t.Errorf("%s apns %+v, want priority 10 and the collapse id", tok, m.APNS)
		}
		if m.Android != nil {
			t.Errorf("%s android %+v, want none on ios", tok, m.Android)
		}
	}
	got := r.Emulator.ByToken("tok-bob")
	if len(got) != 1 {
		t.Fatalf("bob got %d pushes, want 1", len(got))
	}
	m, err := got[0].Decode()
	if err != nil {
		t.Fatal(err)
	}
	if m.Data[fcm.DataID] != b.Id || m.Notification != nil || m.Android == nil || m.Android.Priority != "normal" {
		t.Errorf("bob's data-only push: %+v %+v", m.Data, m.Android)
	}
}

func TestWorkerRemovesDeadTokens(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.Emulator.Unregister("tok-gone")
	r.Emulator.InvalidToken("tok-garbage")
	r.Register(t, "carol", "tok-gone", "tok-garbage", "tok-good")
	r.Register(t, "dan", "tok-dan-gone")
	r.Emulator.Unregister("tok-dan-gone")
	reg := prometheus.NewPedanticRegistry()
	r.StartWorker(t, r.WorkerConfig(), reg)

	r.Notify(t, "carol", "x", nil)
	dan := r.Notify(t, "dan", "y", nil)
	r.WaitPushes(t, 1)
	testenv.WaitFor(t, 10*time.Second, "the dead tokens to be removed", func() bool {
		c, _ := r.Devices.List(context.Background(), "carol")
		d, _ := r.Devices.List(context.Background(), "dan")
		return len(c) == 1 && c[0].Token == "tok-good" && len(d) == 0
	})
	// dan had only a dead token: nothing reached him, and that is on record.
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 10*time.Second, "dan's dead letter", func() bool {
		dl = r.DeadLetters(t)
		return len(dl) == 1
	})
	if dl[0].GetEnvelope().GetId() != dan.Id || dl[0].GetErrorCode() != "UNREGISTERED" {
		t.Fatalf("dead letter %v, want dan's notification with UNREGISTERED", dl[0])
	}
	// carol's and dan's records may be settled in different lanes: dan's
	// dead letter says nothing of carol's count, which the worker adds once
	// her tokens are gone from Redis. Wait for it.
	testenv.WaitFor(t, 10*time.Second, "the worker to count the 3 removed tokens", func() bool {
		return metricValue(t, reg, "herald_fcm_tokens_removed_total") >= 3
	})
	if got := metricValue(t, reg, "herald_fcm_tokens_removed_total"); got != 3 {
		t.Fatalf("tokens_removed_total = %v, want 3", got)
	}
}

func TestWorkerNoDeviceAndExpiredAreAccounted(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	reg := prometheus.NewPedanticRegistry()
	r.StartWorker(t, r.WorkerConfig(), reg)
	env := r.Notify(t, "nobody", "x", nil)

	now := time.Now()
	expired := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: "erin",
		AcceptedAt: timestamppb.New(now.Add(-2 * time.Hour)), ExpiresAt: timestamppb.New(now.Add(-time.Hour))}
	r.Register(t, "erin", "tok-erin")
	if err := r.Queue.Enqueue(context.Background(), expired); err != nil {
		t.Fatal(err)
	}
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 15*time.Second, "the no-device dead letter and the expired count", func() bool {
		dl = r.DeadLetters(t)
		return len(dl) == 1 && metricValue(t, reg, "herald_fcm_notifications_total", "expired") == 1
	})
	if dl[0].GetErrorCode() != fcm.CodeNoDevice || dl[0].GetEnvelope().GetId() != env.Id {
		t.Fatalf("dead letter %v, want %s as NO_DEVICE", dl[0], env.Id)
	}
	if n := r.Emulator.Count(); n != 0 {
		t.Fatalf("emulator got %d pushes; the expired notification must not be pushed", n)
	}
}

func TestWorkerRetriesAfterRetryAfter(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.Register(t, "frank", "tok-frank")
	// A quota storm: the first three sends get 429 with Retry-After: 1.
	r.Emulator.FailNext(3, fcmtest.QuotaExceeded, time.Second)
	r.StartWorker(t, r.WorkerConfig(), nil)
	r.Notify(t, "frank", "x", nil)
	r.WaitPushes(t, 1)

	attempts := r.Emulator.Attempts("tok-frank")
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
	r.Register(t, "gina", "tok-gina")
	r.Emulator.FailFor(time.Hour, fcmtest.Internal, 0)
	cfg := r.WorkerConfig()
	cfg.MaxAttempts = 3
	r.StartWorker(t, cfg, nil)
	env := r.Notify(t, "gina", "x", nil)

	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 20*time.Second, "the dead letter", func() bool {
		dl = r.DeadLetters(t)
		return len(dl) == 1
	})
	d := dl[0]
	if d.GetErrorCode() != "INTERNAL" || d.GetAttempts() != 3 || d.GetEnvelope().GetId() != env.Id ||
		!d.GetLastFailureAt().AsTime().After(d.GetFirstFailureAt().AsTime()) {
		t.Fatalf("dead letter %v, want INTERNAL after 3 attempts, with first and last failure times", d)
	}
	if n := len(r.Emulator.Attempts("tok-gina")); n != 3 {
		t.Fatalf("%d attempts, want exactly 3", n)
	}
}

func TestWorkerPermanentErrorDeadLetters(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.Register(t, "hal", "tok-hal")
	r.Emulator.FailNext(1, fcmtest.ThirdPartyAuthError, 0)
	r.StartWorker(t, r.WorkerConfig(), nil)
	env := r.Notify(t, "hal", "x", nil)
	var dl []*heraldv1.DeadLetter
	testenv.WaitFor(t, 15*time.Second, "the dead letter", func() bool {
		dl = r.DeadLetters(t)
		return len(dl) == 1
	})
	if dl[0].GetErrorCode() != "THIRD_PARTY_AUTH_ERROR" || dl[0].GetEnvelope().GetId() != env.Id || dl[0].GetAttempts() != 1 {
		t.Fatalf("dead letter %v, want a THIRD_PARTY_AUTH_ERROR after 1 attempt", dl[0])
	}
	if n := len(r.Emulator.Attempts("tok-hal")); n != 1 {
		t.Fatalf("%d attempts; a permanent error must not be retried", n)
	}
}

func TestMain(m *testing.M) {
	if testenv.RunChildWorker() || fcm.RunEmulatorChild() {
		return
	}
	os.Exit(m.Run())
}

// TestWorkerCrashLosesNothing kills a worker process with SIGKILL in the
// middle of a stream of notifications, with batches in flight, and starts
// another: every notification is pushed at least once.
func TestWorkerCrashLosesNothing(t *testing.T) {
	t.Parallel()
	r := newRig(t, 3)
	const users, total = 20, 200
	for u := range users {
		r.Register(t, "u"+strconv.Itoa(u), "tok-"+strconv.Itoa(u))
	}
	r.Emulator.SetLatency(3*time.Millisecond, 2*time.Millisecond)
	child := r.StartChildWorker(t)

	var ids []string
	for i := range total {
		ids = append(ids, r.Notify(t, "u"+strconv.Itoa(i%users), strconv.Itoa(i), nil).Id)
		if i == total/2 {
			testenv.WaitFor(t, 30*time.Second, "the child worker to push", func() bool { return r.Emulator.Count() > 20 })
			if err := child.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()
		}
	}
	killedAt := r.Emulator.Count()
	r.StartWorker(t, r.WorkerConfig(), nil)
	testenv.WaitFor(t, 60*time.Second, "every notification pushed", func() bool {
		got := map[string]bool{}
		for _, m := range r.Emulator.Messages() {
			got[m.Data[fcm.DataID]] = true
		}
		for _, id := range ids {
			if !got[id] {
				return false
			}
		}
		return true
	})
	t.Logf("%d notifications; %d pushed before the kill; %d pushes in all (%d pushed twice)",
		len(ids), killedAt, r.Emulator.Count(), r.Emulator.Count()-len(ids))
}

// TestWorkerDedupesRedelivery redelivers a record after its pushes went
// out, and after its user registered one more device: only the new device
// gets it.
func TestWorkerDedupesRedelivery(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.Register(t, "ivan", "tok-ivan")
	if _, _, err := r.Devices.Register(context.Background(), "ivan", "tok-ivan-tablet", "ios"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r.StartWorker(t, r.WorkerConfig(), reg)
	env := r.Notify(t, "ivan", "x", nil)
	r.WaitPushes(t, 2)
	if _, _, err := r.Devices.Register(context.Background(), "ivan", "tok-ivan-watch", "android"); err != nil {
		t.Fatal(err)
	}
	// The same record again, as after a crash before the commit.
	if err := r.Queue.Enqueue(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	marker := r.Notify(t, "ivan", "after", nil)
	r.WaitPushes(t, 6)
	// The worker counts a batch's messages once FCM has answered them, so
	// the emulator can hold the last pushes before they are counted: wait
	// for the marker's batch to be counted, then check nothing more was.
	testenv.WaitFor(t, 10*time.Second, "the marker's pushes to be counted", func() bool {
		return metricValue(t, reg, "herald_fcm_messages_total", "sent") >= 6
	})
	for tok, want := range map[string][]string{
		"tok-ivan":        {env.Id, marker.Id},
		"tok-ivan-tablet": {env.Id, marker.Id},
		"tok-ivan-watch":  {env.Id, marker.Id},
	} {
		ids := pushedIDs(t, r, tok)
		if !slices.Equal(ids, want) {
			t.Errorf("%s was pushed %v, want %v", tok, ids, want)
		}
	}
	if got := metricValue(t, reg, "herald_fcm_messages_total", "duplicate"); got != 2 {
		t.Errorf("%v duplicates counted, want 2", got)
	}
	if got := metricValue(t, reg, "herald_fcm_messages_total", "sent"); got != 6 {
		t.Errorf("%v sent counted, want 6", got)
	}
}

// TestWorkerDedupesRedeliveryInBatch: a record that comes twice in one
// batch (fetched again after a group rebalance while its first copy still
// waited in its lane, or queued twice by a Kafka write whose caller saw it
// fail and the caller's retry) is pushed once: the dedupe sets are read before the
// batch's pushes, so they cannot say the first copy was pushed.
func TestWorkerDedupesRedeliveryInBatch(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	r.Register(t, "ines", "tok-ines", "tok-ines-tablet")
	env := r.Notify(t, "ines", "x", nil)
	if err := r.Queue.Enqueue(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	marker := r.Notify(t, "ines", "after", nil)
	cfg := r.WorkerConfig()
	cfg.BatchWait = time.Second // the three records in one batch
	reg := prometheus.NewRegistry()
	r.StartWorker(t, cfg, reg)
	testenv.WaitFor(t, 30*time.Second, "the marker's pushes", func() bool {
		n := 0
		for _, m := range r.Emulator.Messages() {
			if m.Data[fcm.DataID] == marker.Id {
				n++
			}
		}
		return n == 2
	})
	for _, tok := range []string{"tok-ines", "tok-ines-tablet"} {
		ids := pushedIDs(t, r, tok)
		if want := []string{env.Id, marker.Id}; !slices.Equal(ids, want) {
			t.Errorf("%s was pushed %v, want %v", tok, ids, want)
		}
	}
	if got := metricValue(t, reg, "herald_fcm_messages_total", "duplicate"); got != 2 {
		t.Errorf("%v duplicates counted, want 2", got)
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

// pushedIDs lists the ids of the notifications pushed to tok, in order.
func pushedIDs(t *testing.T, r *testenv.Offline, tok string) []string {
	t.Helper()
	var ids []string
	for _, m := range r.Emulator.ByToken(tok) {
		d, err := m.Decode()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Data[fcm.DataID])
	}
	return ids
}
