package delivery_test

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
)

// BenchmarkAutoPipeliner tries go-redis's AutoPipeliner against the
// publisher's own auto-pipeliner (issue 17), under BenchmarkPublishParallel's
// load: 16 callers per core, benchUsers users online, a redis-server of its
// own. Each sub-benchmark is one way to carry the notify scripts:
//
//	publisher      the publisher as it is: concurrent calls gather in its
//	               auto-pipeliner and go as notify_batch scripts
//	goredis        each call's own notify script, through the AutoPipeliner
//	               (blocking face, default options)
//	goredis-delay  the same, with MaxFlushDelay 100µs, which go-redis
//	               suggests to spend less CPU
//	goredis-fd     the publisher's notify_batch pipelines, sent through a
//	               full-duplex AutoPipeliner (its Pipelined rides the held
//	               connection)
//
// Besides ns/op it reports redis-µs/op (Redis' CPU, INFO cpu), cpu-µs/op
// (this process' user+system CPU, getrusage) and scripts/op (script calls
// Redis ran per notification: 1 without batching). Run one sub-benchmark per
// process, in turns, to compare them on a shared machine:
//
//	go test -c -o /tmp/delivery.test ./delivery/
//	/tmp/delivery.test -test.run '^$' -test.bench 'AutoPipeliner/^publisher$' -test.benchtime 40000x
func BenchmarkAutoPipeliner(b *testing.B) {
	delay := &redis.AutoPipelineOptions{MaxBatchSize: 300, MaxConcurrentBatches: 1, MaxFlushDelay: 100 * time.Microsecond}
	fd := &redis.AutoPipelineOptions{MaxBatchSize: 300, MaxConcurrentBatches: 1, FullDuplex: true}
	for _, bc := range []struct {
		name string
		// setup turns the publisher on rdb into the one to run.
		setup func(b *testing.B, pub *delivery.Publisher, rdb *redis.Client, reg *presence.Registry) *delivery.Publisher
	}{
		{"publisher", func(b *testing.B, pub *delivery.Publisher, _ *redis.Client, _ *presence.Registry) *delivery.Publisher {
			return pub
		}},
		{"goredis", func(b *testing.B, pub *delivery.Publisher, rdb *redis.Client, _ *presence.Registry) *delivery.Publisher {
			delivery.SendEachThrough(pub, newAutoPipeliner(b, rdb, nil))
			return pub
		}},
		{"goredis-delay", func(b *testing.B, pub *delivery.Publisher, rdb *redis.Client, _ *presence.Registry) *delivery.Publisher {
			delivery.SendEachThrough(pub, newAutoPipeliner(b, rdb, delay))
			return pub
		}},
		{"goredis-fd", func(b *testing.B, _ *delivery.Publisher, rdb *redis.Client, reg *presence.Registry) *delivery.Publisher {
			pub, err := delivery.NewPublisher(newAutoPipeliner(b, rdb, fd), reg, delivery.PublisherConfig{})
			if err != nil {
				b.Fatal(err)
			}
			return pub
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := testenv.StartRedisServer(b)
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			b.Cleanup(func() { rdb.Close() })
			reg, pub := testenv.Publisher(b, rdb, "b:", time.Minute)
			for u := range benchUsers {
				ch := testenv.Online(b, rdb, reg, "u"+strconv.Itoa(u)).Channel(redis.WithChannelSize(1 << 16))
				go func() {
					for range ch {
					}
				}()
			}
			pub = bc.setup(b, pub, rdb, reg)
			runPublishParallel(b, pub, rdb)
		})
	}
}

// runPublishParallel is BenchmarkPublishParallel's loop, which also
// reports Redis' CPU and this process' CPU per notification.
func runPublishParallel(b *testing.B, pub *delivery.Publisher, rdb *redis.Client) {
	ctx := context.Background()
	b.SetParallelism(16)
	cpu0, proc0, scripts0 := redisCPU(b, rdb), processCPU(b), scriptCalls(b, rdb)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := pub.Publish(ctx, benchEnvelope("u"+strconv.Itoa(i%benchUsers)), ""); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.StopTimer()
	proc := processCPU(b) - proc0
	b.ReportMetric(float64((redisCPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-µs/op")
	b.ReportMetric(float64(proc.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(scriptCalls(b, rdb)-scripts0)/float64(b.N), "scripts/op")
}

// scriptCalls is how many scripts Redis has run so far (EVAL and EVALSHA
// calls, NOSCRIPT failures included).
func scriptCalls(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k != "cmdstat_eval" && k != "cmdstat_evalsha" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		c, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			b.Fatalf("commandstats %q: %v", line, err)
		}
		n += c
	}
	return n
}

// newAutoPipeliner returns rdb's blocking AutoPipeliner with opts (nil:
// go-redis' defaults), closed at cleanup.
func newAutoPipeliner(b *testing.B, rdb *redis.Client, opts *redis.AutoPipelineOptions) *redis.AutoPipeliner {
	b.Helper()
	ap, err := rdb.AutoPipelineWithOptions(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ap.Close() })
	return ap
}

// processCPU is this process' user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
