package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/cmd/internal/lowrate"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// BenchmarkLowRateEvents is the edge's low-rate trial (issue 17, goal 5),
// heraldbench pollpush's push phase with the edge in a process of its own:
// 10,000 streams (HERALD_LOWRATE_STREAMS) held by this process, one event
// a second for each 30th of them (333 a second, published to Redis as the
// router does), heartbeats every 15 s. The figures are the edge process's
// alone, per event, over HERALD_LOWRATE_WINDOW (8s) after a warm-up of
// HERALD_LOWRATE_WARMUP (20s, so that heartbeats and lease renewals run as
// in a steady state); redis-µs/op is redis-server's, publishing included.
//
//	redis-server --port 6431 --save "" --appendonly no --daemonize yes
//	go test -c -o /tmp/sseedge.test ./cmd/sseedge
//	HERALD_TEST_REDIS_ADDR=127.0.0.1:6431 /tmp/sseedge.test -test.run '^$' \
//	    -test.bench LowRateEvents -test.benchtime 1x -test.count 3
//
// HERALD_LOWRATE_CHILD_ENV gives the edge's process (only) extra
// environment, such as GOMAXPROCS=1; HERALD_LOWRATE_ARGS extra flags.
func BenchmarkLowRateEvents(b *testing.B) {
	streams := 10000
	if v := os.Getenv("HERALD_LOWRATE_STREAMS"); v != "" {
		streams, _ = strconv.Atoi(v)
	}
	warmup := 20 * time.Second
	if v := os.Getenv("HERALD_LOWRATE_WARMUP"); v != "" {
		warmup, _ = time.ParseDuration(v)
	}
	rdb, prefix := testenv.Redis(b)
	_, pub := testenv.Publisher(b, rdb, prefix, 30*time.Second)
	secret := []byte(strings.Repeat("s", 32))

	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(b))
	args := []string{"-http-addr", addr, "-admin-addr", "", "-redis-addr", testenv.RedisAddr(),
		"-redis-prefix", prefix, "-jwt-secret", string(secret), "-log-level", "error",
		"-max-conns", strconv.Itoa(streams + 100), "-max-conns-per-ip", "-1"}
	args = append(args, strings.Fields(os.Getenv("HERALD_LOWRATE_ARGS"))...)
	child := lowrate.Start(b, "TestLowRateChild", args)
	child.WaitListening(b, addr)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	var open, events atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range streams {
		tok, err := sseedge.IssueToken(secret, fmt.Sprint("u", i), time.Hour, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Like an EventSource, retry a refused stream (the edge answers
			// 503 when Redis is slow to confirm a subscription).
			var resp *http.Response
			for range 20 {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/events", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				r, err := tr.RoundTrip(req)
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				if r.StatusCode == http.StatusOK {
					resp = r
					break
				}
				msg, _ := io.ReadAll(io.LimitReader(r.Body, 200))
				r.Body.Close()
				firstErr.CompareAndSwap(nil, r.Status+": "+string(msg))
				time.Sleep(time.Second)
			}
			if resp == nil {
				return
			}
			defer resp.Body.Close()
			open.Add(1)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if bytes.HasPrefix(sc.Bytes(), []byte("id:")) {
					events.Add(1)
				}
			}
		}()
		if i%500 == 499 {
			time.Sleep(50 * time.Millisecond) // pace the connects
		}
	}
	for deadline := time.Now().Add(60 * time.Second); open.Load() < int64(streams); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d streams open; the first failure: %v", open.Load(), streams, firstErr.Load())
		}
	}

	var sent atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / 333)
		defer tick.Stop()
		data := []byte(strings.Repeat("x", 100))
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := time.Now()
			env := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: fmt.Sprint("u", i%streams), Event: "update",
				Data: data, AcceptedAt: timestamppb.New(now)}
			if _, err := pub.Publish(ctx, env, ""); err == nil {
				sent.Add(1)
			}
		}
	}()
	time.Sleep(warmup)
	got0 := events.Load()
	f := child.Measure(b, rdb, sent.Load, lowrate.Window(b))
	if events.Load() == got0 {
		b.Fatal("no event reached a stream in the window")
	}
	f.Report(b)
}

// TestLowRateChild is BenchmarkLowRateEvents's edge process.
func TestLowRateChild(t *testing.T) {
	lowrate.ServeChild(t, run)
}
