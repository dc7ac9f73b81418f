package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herald-push/herald/cmd/internal/lowrate"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// BenchmarkLowRateNotify is the low-rate trial of issue 17's goal 5: the
// router, as this command runs it, in a process of its own, takes unary
// Notify calls for one online user at a fixed rate (333 a second, each
// alone on the wire), and the figures are the router process's alone, per
// call: CPU, context switches, and with perf, system calls and futex
// calls; redis-µs/op is redis-server's. Run it against a redis-server of
// its own, one op per run, rounds alternated with another build:
//
//	redis-server --port 6431 --save "" --appendonly no --daemonize yes
//	go test -c -o /tmp/router.test ./cmd/router
//	HERALD_TEST_REDIS_ADDR=127.0.0.1:6431 /tmp/router.test -test.run '^$' \
//	    -test.bench LowRateNotify -test.benchtime 1x -test.count 3
//
// HERALD_LOWRATE_CHILD_ENV gives the router's process (only) extra
// environment, such as GOMAXPROCS=1; HERALD_LOWRATE_ARGS extra flags;
// HERALD_LOWRATE_WINDOW the span measured (8s).
func BenchmarkLowRateNotify(b *testing.B) {
	rdb, prefix := testenv.Redis(b)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	testenv.Online(b, rdb, reg, "lowrate")

	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(b))
	args := []string{"-grpc-addr", addr, "-admin-addr", "", "-redis-addr", testenv.RedisAddr(),
		"-redis-prefix", prefix, "-insecure-no-auth", "-offline=false", "-log-level", "error"}
	args = append(args, strings.Fields(os.Getenv("HERALD_LOWRATE_ARGS"))...)
	child := lowrate.Start(b, "TestLowRateChild", args)
	child.WaitListening(b, addr)

	conn, err := grpc.NewClient(addr, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := heraldv1.NewRouterServiceClient(conn)
	req := &heraldv1.NotifyRequest{UserId: "lowrate", Event: "update", Data: []byte(strings.Repeat("x", 100))}

	var sent, failed atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / 333)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			// Each call on its own goroutine, so that a slow one does not
			// lower the rate.
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := client.Notify(ctx, req); err != nil && ctx.Err() == nil {
					failed.Add(1)
				}
				sent.Add(1)
			}()
		}
	}()
	time.Sleep(time.Second) // warm up: connections, scripts, the heap
	f := child.Measure(b, rdb, sent.Load, lowrate.Window(b))
	cancel()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d calls failed", n, sent.Load())
	}
	f.Report(b)
}

// TestLowRateChild is BenchmarkLowRateNotify's router process.
func TestLowRateChild(t *testing.T) {
	lowrate.ServeChild(t, run)
}
