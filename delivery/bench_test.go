package delivery_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The benchmarks run the publisher against a redis-server of their own, so
// that its CPU time per notification (redis-µs/op, from INFO cpu) is the
// publisher's alone:
//
//	go test -run '^$' -bench Publish ./delivery/
//
// Unary is one Publish after another; Parallel is 16 callers per core,
// which the auto-pipeliner gathers; Batch100 is PublishBatch of 100.

// newBenchPublisher returns a publisher on a redis-server of the
// benchmark's own, with users online whose channels are drained.
func newBenchPublisher(b *testing.B, users int) (*delivery.Publisher, *redis.Client) {
	b.Helper()
	srv := testenv.StartRedisServer(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { rdb.Close() })
	reg, pub := testenv.Publisher(b, rdb, "b:", time.Minute)
	for u := range users {
		ps := testenv.Online(b, rdb, reg, "u"+strconv.Itoa(u))
		ch := ps.Channel(redis.WithChannelSize(1 << 16))
		go func() {
			for range ch {
			}
		}()
	}
	return pub, rdb
}

// redisCPU is the server's CPU time so far.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// benchEnvelope is a notification of 100 bytes for user.
func benchEnvelope(user string) *heraldv1.Envelope {
	env := envelope(user, strings.Repeat("x", 100))
	env.Event = "bench"
	return env
}

const benchUsers = 64

func BenchmarkPublishUnary(b *testing.B) {
	pub, rdb := newBenchPublisher(b, benchUsers)
	ctx := context.Background()
	cpu0 := redisCPU(b, rdb)
	i := 0
	for b.Loop() {
		if _, err := pub.Publish(ctx, benchEnvelope("u"+strconv.Itoa(i%benchUsers)), ""); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64((redisCPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-µs/op")
}

func BenchmarkPublishParallel(b *testing.B) {
	pub, rdb := newBenchPublisher(b, benchUsers)
	runPublishParallel(b, pub, rdb)
}

// BenchmarkPublishBatch100: an op is one notification, sent in batches of
// 100.
func BenchmarkPublishBatch100(b *testing.B) {
	pub, rdb := newBenchPublisher(b, benchUsers)
	ctx := context.Background()
	cpu0 := redisCPU(b, rdb)
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		n := min(100, b.N-i)
		ns := make([]delivery.Notification, n)
		for k := range ns {
			ns[k] = delivery.Notification{Env: benchEnvelope("u" + strconv.Itoa((i+k)%benchUsers))}
		}
		_, errs := pub.PublishBatch(ctx, ns)
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((redisCPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-µs/op")
}
