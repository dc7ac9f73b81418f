package fcm_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/fcm"

	"github.com/herald-push/herald/integration/testenv"
)

// BenchmarkWorkerPushes measures the worker end to end: b.N notifications,
// waiting in the offline topic, for users with one device each, pushed to
// the FCM emulator. Compare pushes/s with BenchmarkEmulatorSendEach, the
// same emulator driven by SendEach directly, measured in the same run:
//
//	go test -run '^$' -bench 'WorkerPushes|EmulatorSendEach' -benchtime 20000x ./fcm/
func BenchmarkWorkerPushes(b *testing.B) {
	o := testenv.StartOffline(b, 3)
	const users = 1000
	for u := range users {
		o.Register(b, "u"+strconv.Itoa(u), "tok-"+strconv.Itoa(u))
	}
	for i := range b.N {
		o.Notify(b, "u"+strconv.Itoa(i%users), `{"n":1}`, nil)
	}
	b.ResetTimer()
	start := time.Now()
	o.StartWorker(b, o.WorkerConfig(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := o.Emulator.WaitFor(ctx, b.N); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pushes/s")
}

// BenchmarkEmulatorSendEach is the baseline: the FCM emulator's own rate
// through the firebase client, in SendEach calls of 500.
func BenchmarkEmulatorSendEach(b *testing.B) {
	o := testenv.StartOffline(b, 1)
	msgs := make([]*messaging.Message, 500)
	for i := range msgs {
		msgs[i] = &messaging.Message{Token: "tok-" + strconv.Itoa(i), Data: map[string]string{"herald_payload": `{"n":1}`}}
	}
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; sent += len(msgs) {
		n := min(len(msgs), b.N-sent)
		if _, err := o.Deps.Sender.SendEach(ctx, msgs[:n]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pushes/s")
}

// latencySender answers every message as sent after an FCM-like latency of
// 20-40 ms, without HTTP: the worker's own ceiling, apart from the client's
// and the emulator's CPU.
type latencySender struct{}

func (latencySender) SendEach(ctx context.Context, msgs []*messaging.Message) (*messaging.BatchResponse, error) {
	resp := &messaging.BatchResponse{Responses: make([]*messaging.SendResponse, len(msgs)), SuccessCount: len(msgs)}
	var wg sync.WaitGroup
	for i := range msgs {
		wg.Go(func() {
			time.Sleep(20*time.Millisecond + rand.N(20*time.Millisecond))
			resp.Responses[i] = &messaging.SendResponse{Success: true, MessageID: "m"}
		})
	}
	wg.Wait()
	return resp, ctx.Err()
}

// BenchmarkWorkerLatencyBound measures the worker against a sender with
// FCM's latency and no cost of its own, under the default quota (9,500/s)
// and without one:
//
//	go test -run '^$' -bench WorkerLatencyBound -benchtime 40000x ./fcm/
func BenchmarkWorkerLatencyBound(b *testing.B) {
	for _, quota := range []int{0, -1} {
		b.Run("quota="+strconv.Itoa(quota), func(b *testing.B) {
			o := testenv.StartOffline(b, 12)
			const users = 5000
			for u := range users {
				o.Register(b, "u"+strconv.Itoa(u), "tok-"+strconv.Itoa(u))
			}
			var wg sync.WaitGroup
			var next atomic.Int64
			for range 64 {
				wg.Go(func() {
					for i := int(next.Add(1)) - 1; i < b.N; i = int(next.Add(1)) - 1 {
						o.Notify(b, "u"+strconv.Itoa(i%users), `{"n":1}`, nil)
					}
				})
			}
			wg.Wait()
			reg := prometheus.NewRegistry()
			deps := o.Deps
			deps.Sender, deps.Registerer = latencySender{}, reg
			cfg := o.WorkerConfig()
			cfg.QuotaPerMinute = quota
			w, err := fcm.New(cfg, deps)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			// From the first push: joining the group is not pushing.
			for sentCount(b, reg) == 0 {
				time.Sleep(time.Millisecond)
			}
			b.ResetTimer()
			start, n0 := time.Now(), sentCount(b, reg)
			for sentCount(b, reg) < float64(b.N) {
				time.Sleep(5 * time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric((float64(b.N)-n0)/time.Since(start).Seconds(), "pushes/s")
			cancel()
			<-done
		})
	}
}

func sentCount(b *testing.B, reg *prometheus.Registry) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "herald_fcm_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "sent" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
