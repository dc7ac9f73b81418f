package fcm_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"

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
