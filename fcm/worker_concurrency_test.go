package fcm_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/segmentio/kafka-go"

	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
)

// TestWorkerStaysUnderQuota fills the offline topic with more than the
// emulator's quota lets through at once and starts a worker: with the
// worker's quota set to the emulator's, FCM answers no 429 and every push
// goes through; without it (the control, which shows the test can fail),
// the emulator answers 429.
//
// The control's emulator allows one send a second, with no burst, so that
// any worker, however loaded the machine, sends faster than that: it meets
// a 429 within its first sends, which is what it waits for. (With the
// limited case's quota, a worker on a loaded machine could stay under it
// by being slow, and the control proved nothing.)
//
// The limited case's emulator lets a burst of two seconds' worth through,
// as FCM, which keeps its quota over a minute, lets more: the sends the
// worker spaces out can reach the emulator bunched, when a loaded machine
// stalls the emulator or the worker's send goroutines, and a CI run under
// load met 6 refusals of 300 with one second's worth. It still refuses a
// worker that sends at twice the quota (600 sends in 3.2 s against at most
// 520 let through).
func TestWorkerStaysUnderQuota(t *testing.T) {
	t.Parallel()
	const perMinute, total = 6000, 600 // 100 a second; 6 seconds' worth queued
	for _, tc := range []struct {
		name        string
		emuQuota    int // the emulator's quota, a minute
		emuBurst    int // the emulator's burst (0: one second's worth)
		workerQuota int // the worker's (-1: none)
		notify      int
		want429s    bool
	}{
		{name: "limited", emuQuota: perMinute, emuBurst: 2 * perMinute / 60, workerQuota: perMinute, notify: total},
		{name: "unlimited", emuQuota: 60, workerQuota: -1, notify: 20, want429s: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, 3)
			r.Emulator.SetQuota(tc.emuQuota, tc.emuBurst)
			for i := range tc.notify {
				r.Register(t, "q"+strconv.Itoa(i), "tok-q"+strconv.Itoa(i))
			}
			var wg sync.WaitGroup
			for i := range tc.notify {
				wg.Go(func() { r.Notify(t, "q"+strconv.Itoa(i), "x", nil) })
			}
			wg.Wait()
			cfg := r.WorkerConfig()
			cfg.QuotaPerMinute = tc.workerQuota
			r.StartWorker(t, cfg, nil)
			if !tc.want429s {
				r.WaitPushes(t, tc.notify)
				throttled := r.Emulator.Stats().Errors[fcmtest.QuotaExceeded]
				t.Logf("%d pushes, %d answered 429", r.Emulator.Count(), throttled)
				if throttled != 0 {
					t.Fatalf("%d sends answered 429 QUOTA_EXCEEDED; the worker's quota must keep it under FCM's", throttled)
				}
				return
			}
			deadline := time.Now().Add(30 * time.Second)
			for r.Emulator.Stats().Errors[fcmtest.QuotaExceeded] == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			throttled := r.Emulator.Stats().Errors[fcmtest.QuotaExceeded]
			t.Logf("%d pushes, %d answered 429", r.Emulator.Count(), throttled)
			if throttled == 0 {
				t.Fatal("no 429 without the worker's quota, at one send a second: the control proves nothing")
			}
		})
	}
}

// TestWorkerKeepsUserOrder pushes many notifications of a few users through
// several lanes, in small batches, with a jittery FCM: each device gets its
// user's notifications in the order they were written.
func TestWorkerKeepsUserOrder(t *testing.T) {
	t.Parallel()
	r := newRig(t, 2)
	const users, each = 6, 25
	for u := range users {
		r.Register(t, "o"+strconv.Itoa(u), "tok-o"+strconv.Itoa(u))
	}
	for i := range users * each {
		r.Notify(t, "o"+strconv.Itoa(i%users), strconv.Itoa(i/users), nil)
	}
	r.Emulator.SetLatency(4*time.Millisecond, 4*time.Millisecond)
	cfg := r.WorkerConfig()
	cfg.Concurrency, cfg.BatchSize = 4, 8
	r.StartWorker(t, cfg, nil)
	r.WaitPushes(t, users*each)
	for u := range users {
		msgs := r.Emulator.ByToken("tok-o" + strconv.Itoa(u))
		if len(msgs) != each {
			t.Fatalf("user %d got %d pushes, want %d", u, len(msgs), each)
		}
		for k, m := range msgs {
			if got := m.Data[fcm.DataPayload]; got != strconv.Itoa(k) {
				t.Fatalf("user %d: push %d carries notification %s; the order is broken", u, k, got)
			}
		}
	}
}

// stallSender holds the sends to one token until released, and passes the
// others on.
type stallSender struct {
	next    fcm.Sender
	token   string
	stalled chan struct{} // closed when a send to token arrived
	release chan struct{}
	once    sync.Once
}

func (s *stallSender) SendEach(ctx context.Context, msgs []*messaging.Message) (*messaging.BatchResponse, error) {
	for _, m := range msgs {
		if m.Token == s.token {
			s.once.Do(func() { close(s.stalled) })
			select {
			case <-s.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return s.next.SendEach(ctx, msgs)
}

// TestWorkerCommitsOnlyFinishedPrefix stalls the push of the first
// notification of a partition while the later ones, in other lanes, are
// pushed: the group's committed offset must not pass the stalled record,
// so that a crash there would have it read again. Once released, the
// commit reaches the end.
func TestWorkerCommitsOnlyFinishedPrefix(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1)
	const others = 40
	r.Register(t, "stuck", "tok-stuck")
	for i := range others {
		r.Register(t, "p"+strconv.Itoa(i), "tok-p"+strconv.Itoa(i))
	}
	r.Notify(t, "stuck", "first", nil)
	for i := range others {
		r.Notify(t, "p"+strconv.Itoa(i), "later", nil)
	}
	s := &stallSender{next: r.Deps.Sender, token: "tok-stuck", stalled: make(chan struct{}), release: make(chan struct{})}
	deps := r.Deps
	deps.Sender = s
	cfg := r.WorkerConfig()
	cfg.Concurrency, cfg.BatchSize = 4, 4
	w, err := fcm.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	<-s.stalled
	// Every record but the stalled one's, less the users in its lane's
	// batch, gets pushed; none of it may be committed.
	testenv.WaitFor(t, 20*time.Second, "the other lanes to push", func() bool { return r.Emulator.Count() >= others/2 })
	time.Sleep(300 * time.Millisecond) // a commit, if the worker were to make one, has time to land
	if off := committed(t, r.Kafka.Brokers, cfg.GroupID); off > 0 {
		t.Fatalf("committed offset %d while the record at offset 0 is not done", off)
	}
	close(s.release)
	r.WaitPushes(t, others+1)
	testenv.WaitFor(t, 20*time.Second, "the commit to reach the end", func() bool {
		return committed(t, r.Kafka.Brokers, "herald-fcm") == others+1
	})
}

// committed is the group's committed offset of the offline topic's
// partition 0, or -1 when there is none.
func committed(t *testing.T, brokers []string, group string) int64 {
	t.Helper()
	if group == "" {
		group = "herald-fcm"
	}
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	resp, err := c.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group,
		Topics: map[string][]int{queue.DefaultOfflineTopic: {0}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Topics[queue.DefaultOfflineTopic] {
		if p.Partition == 0 {
			return p.CommittedOffset
		}
	}
	return -1
}
