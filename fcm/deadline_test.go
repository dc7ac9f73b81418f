package fcm_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
)

// TestWorkerCutsHungSend hangs FCM with the emulator's latency fault, far
// past any deadline, under senders whose HTTP clients have no timeout of
// their own: the SDK's default client, and the one fcmworker builds (over
// HTTP/1.1 and h2c). The worker must cut the call at SendTimeout, queue a
// retry as DEADLINE_EXCEEDED and commit the offline partition past the
// hung record; once FCM answers again, the push is delivered, once.
func TestWorkerCutsHungSend(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		sender func(t *testing.T, endpoint string) fcm.Sender
	}{
		{name: "sdk_client", sender: func(t *testing.T, endpoint string) fcm.Sender {
			c, err := fcmtest.NewClient(t.Context(), endpoint, "herald-test")
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{name: "worker_sender", sender: func(t *testing.T, endpoint string) fcm.Sender {
			s, err := fcm.NewSender(t.Context(), fcm.ClientConfig{Project: "herald-test", Endpoint: endpoint, Conns: 2})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{name: "worker_sender_h2c", sender: func(t *testing.T, endpoint string) fcm.Sender {
			// HTTP/2 as to FCM, over group-commit connections.
			s, err := fcm.NewSender(t.Context(), fcm.ClientConfig{Project: "herald-test", Endpoint: endpoint, Conns: 2, H2C: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, 1)
			r.Register(t, "hana", "tok-hana")
			r.Emulator.SetLatency(time.Hour, 0)
			r.Deps.Sender = tc.sender(t, r.Emulator.Endpoint())
			cfg := r.WorkerConfig()
			cfg.SendTimeout = 300 * time.Millisecond
			cfg.MaxAttempts = 50 // the retries made while FCM still hangs must not spend the budget
			reg := prometheus.NewPedanticRegistry()
			r.StartWorker(t, cfg, reg)
			env := r.Notify(t, "hana", "x", nil)

			testenv.WaitFor(t, 15*time.Second, "the offline partition's commit past the hung record", func() bool {
				return committedOn(t, r.Kafka.Brokers, "herald-fcm", queue.DefaultOfflineTopic) == 1
			})
			if got := metricValue(t, reg, "herald_fcm_retries_total", "DEADLINE_EXCEEDED"); got < 1 {
				t.Fatalf("retries_total{code=DEADLINE_EXCEEDED} = %v, want the hung send retried as DEADLINE_EXCEEDED", got)
			}
			if n := r.Emulator.Count(); n != 0 {
				t.Fatalf("emulator accepted %d pushes while hung", n)
			}

			r.Emulator.SetLatency(0, 0)
			r.WaitPushes(t, 1)
			// Every retry record handled: no second push can still come.
			testenv.WaitFor(t, 15*time.Second, "the retry partition's commit to its end", func() bool {
				end := int64(len(r.Kafka.ReadAll(queue.DefaultRetryTopic)))
				return end > 0 && committedOn(t, r.Kafka.Brokers, "herald-fcm.retry", queue.DefaultRetryTopic) == end
			})
			got := r.Emulator.ByToken("tok-hana")
			if len(got) != 1 {
				t.Fatalf("tok-hana got %d pushes, want 1", len(got))
			}
			if m, err := got[0].Decode(); err != nil || m.Data[fcm.DataID] != env.Id {
				t.Fatalf("push %+v (%v), want notification %s", m, err, env.Id)
			}
			if dl := r.DeadLetters(t); len(dl) != 0 {
				t.Fatalf("%d dead letters, want none", len(dl))
			}
		})
	}
}

// committedOn is group's committed offset of topic's partition 0, or -1
// when there is none.
func committedOn(t *testing.T, brokers []string, group, topic string) int64 {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Partition == 0 {
			return p.CommittedOffset
		}
	}
	return -1
}
