package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain lets the test binary serve as a connection holder child, since
// the tool re-executes its own binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		if err := runChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == scaleChildFlag {
		if err := runScaleChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench scale holder:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == workerChildFlag {
		if err := runWorkerChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestHistQuantiles(t *testing.T) {
	t.Parallel()
	var h hist
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.quantile(tc.q)
		if d := float64(got-tc.want) / float64(tc.want); d < 0 || d > 1.0/64 {
			t.Errorf("quantile(%v) = %v, want %v within 1/64 above", tc.q, got, tc.want)
		}
	}
	var merged hist
	merged.merge(&h)
	merged.merge(&h)
	if merged.N != 2*h.N || merged.quantile(0.5) != h.quantile(0.5) || merged.Max != h.Max {
		t.Errorf("merge: n %d, p50 %v, max %v", merged.N, merged.quantile(0.5), merged.Max)
	}
	// Through JSON, as children send it.
	b, _ := json.Marshal(&h)
	var back hist
	if err := json.Unmarshal(b, &back); err != nil || back.quantile(0.99) != h.quantile(0.99) {
		t.Errorf("JSON round trip: %v, p99 %v", err, back.quantile(0.99))
	}
	for v := int64(0); v < 1<<40; v = v*3 + 1 {
		if i := bucketOf(v); bucketHigh(i) < v || (i > 0 && bucketHigh(i-1) >= v) {
			t.Fatalf("value %d in bucket %d [.., %d]", v, i, bucketHigh(i))
		}
	}
}

func TestOpenLoopKeepsSchedule(t *testing.T) {
	t.Parallel()
	var calls, early atomic.Int64
	res := openLoop(context.Background(), 200, 250*time.Millisecond, 4, func(_ context.Context, i int, sched time.Time) error {
		calls.Add(1)
		if time.Now().Before(sched) {
			early.Add(1)
		}
		return nil
	})
	if res.Sent != 50 || calls.Load() != 50 || res.Latency.N != 50 || res.Failed != 0 {
		t.Errorf("sent %d, called %d, recorded %d, failed %d; want 50, 50, 50, 0", res.Sent, calls.Load(), res.Latency.N, res.Failed)
	}
	if early.Load() != 0 {
		t.Errorf("%d calls made before their scheduled time", early.Load())
	}
}

// testRedis is the shared redis-server when one answers, or an embedded one.
func testRedis(t *testing.T) string {
	t.Helper()
	if c, err := net.DialTimeout("tcp", "127.0.0.1:6379", time.Second); err == nil {
		c.Close()
		return "127.0.0.1:6379"
	}
	t.Log("no redis-server on 127.0.0.1:6379: using miniredis")
	return "mini"
}

// runReport runs heraldbench with args and -json, and returns the table it
// printed and its rows by "scenario|figure".
func runReport(t *testing.T, args ...string) (string, map[string]row) {
	t.Helper()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	var out, log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, append(args, "-json", jsonPath), &out, &log); err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, log.String(), out.String())
	}
	t.Log("\n" + out.String())
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	fig := map[string]row{}
	for _, r := range rep.Rows {
		fig[r.Scenario+"|"+r.Figure] = r
	}
	return out.String(), fig
}

func TestRunSelfQuick(t *testing.T) {
	table, fig := runReport(t, "-self", "-quick", "-redis", testRedis(t),
		"-idle-conns", "150", "-conns", "60", "-rates", "100", "-duration", "1s", "-base-duration", "300ms", "-pairs", "2",
		"-callers", "8", "-workers", "16", "-broadcast-conns", "120", "-broadcasts", "2", "-per-addr", "50", "-per-child", "100",
		"-poll-clients", "80", "-poll-duration", "3s")
	for _, r := range fig {
		if !strings.Contains(table, r.Figure) {
			t.Errorf("table lacks %q", r.Figure)
		}
	}
	get := func(key string) row {
		t.Helper()
		r, ok := fig[key]
		if !ok {
			t.Fatalf("no row %q", key)
		}
		return r
	}
	for _, k := range []string{
		"baseline|Redis PUBLISH, pipelines of 64, 4 clients",
		"baseline|no-op gRPC unary, closed loop, 8 callers",
		"baseline|FCM emulator Send, closed loop, 8 callers",
		"router|Notify a second, closed loop, 8 callers",
	} {
		if v := get(k).Value; v <= 0 {
			t.Errorf("%s = %v, want > 0", k, v)
		}
	}
	if v := get("idle|connections held").Value; v != 150 {
		t.Errorf("idle connections held %v, want 150", v)
	}
	if v := get("idle|child processes").Value; v != 2 {
		t.Errorf("idle child processes %v, want 2 (per-child 100)", v)
	}
	sent, delivered := get("unicast 100/s|sent").Value, get("unicast 100/s|delivered").Value
	if sent != 100 || delivered != sent {
		t.Errorf("unicast at 100/s: sent %v, delivered %v; want 100 and 100", sent, delivered)
	}
	if v := get("unicast 100/s|failed").Value; v != 0 {
		t.Errorf("unicast failed %v", v)
	}
	var prev float64
	for _, q := range []string{"p50", "p90", "p99", "p99.9", "max"} {
		v := get("unicast 100/s|Notify→receive " + q).Value
		if v <= 0 || v < prev {
			t.Errorf("Notify→receive %s = %v ms, after %v: want positive and ordered", q, v, prev)
		}
		prev = v
	}
	// The goals' ratios come from the pairs of rounds, with their spread.
	for _, k := range []string{"router|Notify a second, against the no-op call", "unicast 100/s|Notify→receive p50"} {
		if r := get(k); r.Pairs != 2 || r.Ratio <= 0 || r.RatioMin > r.Ratio || r.Ratio > r.RatioMax {
			t.Errorf("%s: %d pairs, ratio %v (%v–%v); want 2 pairs, the median within its spread", k, r.Pairs, r.Ratio, r.RatioMin, r.RatioMax)
		}
	}
	if r := get("router|delivered"); r.Ratio != 1 {
		t.Errorf("router delivered %v, ratio to sent %v; want 1", r.Value, r.Ratio)
	}
	// So small a broadcast may cost the edge less than one 10 ms tick of CPU
	// time: then the table says so instead of printing a rate.
	if r, ok := fig["broadcast|deliveries per edge core-second"]; ok && r.Value <= 0 ||
		!ok && !strings.Contains(table, "edge CPU time did not move") {
		t.Errorf("broadcast: neither a positive delivery rate nor the note that CPU did not move")
	}
	if r := get("broadcast|delivered"); r.Value != 240 {
		t.Errorf("broadcast delivered %v, want 240", r.Value)
	}
	if r := get("poll vs push, 80 clients|push every 30s: events delivered"); r.Value <= 0 || r.Ratio != 1 {
		t.Errorf("poll vs push: %v events delivered, ratio to sent %v; want some, all delivered", r.Value, r.Ratio)
	}
	if r := get("poll vs push, 80 clients|poll every 3s: requests answered"); r.Value <= 0 {
		t.Errorf("poll vs push: %v polls answered", r.Value)
	}
	if v := get("poll vs push, 80 clients|poll: requests failed").Value; v != 0 {
		t.Errorf("poll vs push: %v polls failed", v)
	}
	p50, worst := get("broadcast|per-connection delivery p50").Value, get("broadcast|time to deliver one broadcast to all, worst").Value
	if p50 <= 0 || p50 > worst {
		t.Errorf("broadcast p50 %v ms, worst time to all %v ms: want 0 < p50 <= worst", p50, worst)
	}
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"self", []string{"-self"}, true},
		{"no secret", []string{"-grpc", "x:1"}, false},
		{"deployment", []string{"-jwt-secret", "s", "-pids", "edge=1,router=2"}, true},
		{"bad scenario", []string{"-self", "-scenario", "nosuch"}, false},
		{"offline", []string{"-self", "-scenario", "offline"}, true},
		{"bad rate", []string{"-self", "-rates", "1k"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, &bytes.Buffer{})
			if (err == nil) != tc.ok {
				t.Errorf("parseFlags(%q) = %v, want ok %v", tc.args, err, tc.ok)
			}
		})
	}
	c, _ := parseFlags([]string{"-self", "-quick", "-conns", "7"}, &bytes.Buffer{})
	if c.conns != 7 || c.idleConns != 2000 || len(c.rates) != 2 {
		t.Errorf("-quick with -conns 7: conns %d, idle %d, rates %v", c.conns, c.idleConns, c.rates)
	}
	c, _ = parseFlags([]string{"-self", "-self-lease-ttl", "2m", "-self-heartbeat", "1m"}, &bytes.Buffer{})
	if c.tune.leaseTTL != 2*time.Minute || c.tune.heartbeat != time.Minute {
		t.Errorf("-self-lease-ttl 2m -self-heartbeat 1m: %+v", c.tune)
	}
}
