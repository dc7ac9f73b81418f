package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSoakSelf runs a short soak against Herald in this process: the series
// has one sample per interval and nothing grows.
func TestSoakSelf(t *testing.T) {
	jsonPath := filepath.Join(t.TempDir(), "soak.json")
	var out, log bytes.Buffer
	args := []string{"-self", "-scenario", "soak", "-redis", testRedis(t), "-json", jsonPath,
		"-soak-conns", "20", "-soak-rate", "50", "-soak-duration", "3s", "-soak-sample", "500ms",
		"-workers", "8", "-per-addr", "10"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, args, &out, &log); err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, log.String(), out.String())
	}
	t.Log("\n" + out.String())
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Rows []row      `json:"rows"`
		Soak soakResult `json:"soak"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	s := rep.Soak
	if len(s.Samples) != 6 {
		t.Fatalf("%d samples, want 6 (3s every 500ms)", len(s.Samples))
	}
	var prev soakSample
	for i, x := range s.Samples {
		if x.Elapsed <= prev.Elapsed || x.Sent < prev.Sent || x.Delivered < prev.Delivered {
			t.Errorf("sample %d %+v after %+v: want elapsed, sent and delivered to rise", i+1, x, prev)
		}
		if x.RSS <= 0 || x.Goroutines <= 0 {
			t.Errorf("sample %d: RSS %d, goroutines %d: want both read", i+1, x.RSS, x.Goroutines)
		}
		prev = x
	}
	if s.Sent != 150 || s.Failed != 0 || s.Delivered != 150 {
		t.Errorf("sent %d, failed %d, delivered %d; want 150, 0, 150", s.Sent, s.Failed, s.Delivered)
	}
	if g, err := checkGrowth(s.Samples, s.Limits); err != nil || g.Warmup != 1 || g.Window != 1 {
		t.Errorf("checkGrowth of the series: %+v, %v; want warm-up 1, window 1, no error", g, err)
	}
	if len(s.Failures) != 0 {
		t.Errorf("failures: %q", s.Failures)
	}
	for _, want := range []string{"soak series", "elapsed", "growth: RSS", "soak: passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// series makes n samples, one a second, from the RSS and goroutines of
// sample i.
func series(n int, rss func(i int) int64, gor func(i int) int) []soakSample {
	ss := make([]soakSample, n)
	for i := range ss {
		ss[i] = soakSample{Elapsed: time.Duration(i+1) * time.Second, RSS: rss(i), Goroutines: gor(i)}
	}
	return ss
}

func TestCheckGrowth(t *testing.T) {
	t.Parallel()
	lim := soakLimits{RSSGrowth: 20, GoroutineGrowth: 10, GoroutineSlack: 50}
	const mib = 1 << 20
	flatRSS := func(int) int64 { return 100 * mib }
	flatGor := func(int) int { return 1000 }
	// Noise within the thresholds: ±8% RSS, ±5% goroutines, alternating.
	noise := func(i int, pct float64) float64 { return 1 + pct/100*float64(1-2*(i%2)) }
	for _, tc := range []struct {
		name   string
		series []soakSample
		fail   string // in the error; empty: passes
	}{
		{"flat", series(60, flatRSS, flatGor), ""},
		{"noise", series(60, func(i int) int64 { return int64(100 * mib * noise(i, 8)) },
			func(i int) int { return int(1000 * noise(i+1, 5)) }), ""},
		{"memory leak", series(60, func(i int) int64 { return int64(100+2*i) * mib }, flatGor), "RSS grew"},
		{"goroutine leak", series(60, flatRSS, func(i int) int { return 1000 + 10*i }), "goroutines grew"},
		{"both", series(60, func(i int) int64 { return int64(100+2*i) * mib }, func(i int) int { return 1000 + 10*i }), "RSS grew"},
		{"small count within slack", series(8, flatRSS, func(i int) int { return 20 + 6*i }), ""},
		{"small count beyond slack", series(8, flatRSS, func(i int) int { return 20 + 20*i }), "goroutines grew"},
		{"warm-up left out", series(20, func(i int) int64 {
			if i < 2 {
				return 10 * mib
			}
			return 100 * mib
		}, flatGor), ""},
		{"not read", series(10, func(int) int64 { return 0 }, func(int) int { return 0 }), ""},
		{"too few", series(2, flatRSS, flatGor), "too few"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g, err := checkGrowth(tc.series, lim)
			switch {
			case tc.fail == "" && err != nil:
				t.Errorf("checkGrowth: %v (%s), want it to pass", err, g)
			case tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)):
				t.Errorf("checkGrowth: %v (%s), want an error with %q", err, g, tc.fail)
			}
		})
	}
	g, _ := checkGrowth(series(60, flatRSS, flatGor), lim)
	if g.Warmup != 6 || g.Window != 13 {
		t.Errorf("60 samples: warm-up %d, window %d; want 6 and 13", g.Warmup, g.Window)
	}
}

func TestSoakFlags(t *testing.T) {
	t.Parallel()
	c, err := parseFlags([]string{"-self", "-scenario", "soak"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	s := c.soak
	if !s.on || len(c.scenarios) != 0 || s.duration != 30*time.Minute || s.rate != 500 || s.conns != 2000 || s.sample != 30*time.Second ||
		s.limits != (soakLimits{RSSGrowth: 20, GoroutineGrowth: 10, GoroutineSlack: 50}) || s.samples() != 60 {
		t.Errorf("defaults: %+v, scenarios %q", s, c.scenarios)
	}
	c, err = parseFlags([]string{"-jwt-secret", "x", "-scenario", "unicast,soak", "-admin", "10.0.0.6:9090, http://10.0.0.5:9091/m"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://10.0.0.6:9090/metrics", "http://10.0.0.5:9091/m"}; fmt.Sprint(c.soak.admin) != fmt.Sprint(want) || !c.soak.on || len(c.scenarios) != 1 {
		t.Errorf("admin %q, want %q; soak %v, scenarios %q", c.soak.admin, want, c.soak.on, c.scenarios)
	}
	for _, bad := range [][]string{
		{"-self", "-scenario", "soak", "-soak-duration", "1m", "-soak-sample", "30s"},
		{"-self", "-scenario", "soak", "-soak-rate", "0"},
	} {
		if _, err := parseFlags(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("parseFlags(%q) passed, want an error", bad)
		}
	}
}

func TestScrapeGoroutines(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\ngo_goroutines 42\n")
	}))
	defer srv.Close()
	n, err := scrapeGoroutines(context.Background(), srv.Client(), []string{metricsURL(srv.URL), metricsURL(srv.URL)})
	if err != nil || n != 84 {
		t.Errorf("scrapeGoroutines = %d, %v; want 84 (42 on each of two)", n, err)
	}
}

func TestHistSince(t *testing.T) {
	t.Parallel()
	var h hist
	for range 100 {
		h.record(time.Millisecond)
	}
	prev := h
	prev.Counts = map[int]uint64{}
	for i, c := range h.Counts {
		prev.Counts[i] = c
	}
	for range 10 {
		h.record(50 * time.Millisecond)
	}
	d := h.since(&prev)
	if d.N != 10 || d.quantile(0.5) < 49*time.Millisecond {
		t.Errorf("since: n %d, p50 %v; want 10 at about 50ms", d.N, d.quantile(0.5))
	}
}
