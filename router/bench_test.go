package router_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The benchmarks compare Notify with the raw Redis PUBLISH it is built on,
// measured in the same run against the same redis-server, so that the ratio
// means something on a shared, noisy machine:
//
//	go test -run '^$' -bench . -benchtime 3s ./router/
//
// Sequential benchmarks give the round-trip time (ns/op); the Parallel ones
// give throughput with 4 callers per core.

var payload = []byte(strings.Repeat("x", 100))

// drain consumes user's channel in the background, as an edge would.
func drain(b *testing.B, r *testRouter, user string) {
	ps := r.online(b, user)
	ch := ps.Channel(redis.WithChannelSize(1 << 16))
	go func() {
		for range ch {
		}
	}()
}

func BenchmarkBaselineRedisPublish(b *testing.B) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	channel := delivery.Channel(r.prefix, delivery.UserStream("bench"))
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if err := r.rdb.Publish(ctx, channel, payload).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNotifyOnline(b *testing.B) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	ctx := context.Background()
	req := &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload}
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.client.Notify(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBaselineRedisPublishParallel(b *testing.B) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	channel := delivery.Channel(r.prefix, delivery.UserStream("bench"))
	ctx := context.Background()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := r.rdb.Publish(ctx, channel, payload).Err(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkNotifyOnlineParallel(b *testing.B) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	ctx := context.Background()
	req := &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload}
	b.SetParallelism(4)
	cpu := startCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.client.Notify(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	cpu.report(b)
}

// cpuMeter reads this process's CPU time (user and system): the router's,
// its gRPC client's and the drain's, not redis-server's. On a shared
// machine, CPU per call moves less than time per call.
type cpuMeter struct{ start time.Duration }

func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU(tb testing.TB) cpuMeter { return cpuMeter{processCPU(tb)} }

// report adds the process CPU per operation since start, in µs.
func (m cpuMeter) report(b *testing.B) {
	b.ReportMetric(float64(processCPU(b)-m.start)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

func BenchmarkNotifyOffline(b *testing.B) {
	r := newTestRouter(b, nil)
	ctx := context.Background()
	req := &heraldv1.NotifyRequest{UserId: "nobody", Data: payload}
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.client.Notify(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNotifyBatch100: an op is one notification, sent in NotifyBatch
// calls of 100 to one online user; compare with BenchmarkNotifyOnline and
// BenchmarkBaselineRedisPublish.
func BenchmarkNotifyBatch100(b *testing.B) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	ctx := context.Background()
	req := &heraldv1.NotifyBatchRequest{}
	for range 100 {
		req.Notifications = append(req.Notifications, &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		req.Notifications = req.Notifications[:min(100, b.N-i)]
		resp, err := r.client.NotifyBatch(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		for _, res := range resp.GetResults() {
			if res.GetCode() != 0 {
				b.Fatal(res.GetMessage())
			}
		}
	}
}
