package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// soakConfig is what the -soak-* flags say. The soak is run by hand, not in
// CI: its defaults make a 30-minute run.
type soakConfig struct {
	on       bool // -scenario soak
	duration time.Duration
	rate     float64
	conns    int
	sample   time.Duration
	admin    []string // admin listeners to scrape go_goroutines from (not with -self)
	limits   soakLimits
	// maxLost is how many events sent may be missing at the end, after
	// the load stopped and the events in flight had time to arrive.
	maxLost int
}

// soakLimits is the growth a soak tolerates, from the first quarter of the
// samples after the warm-up to the last quarter.
type soakLimits struct {
	RSSGrowth       float64 `json:"rss_growth_pct"`       // percent
	GoroutineGrowth float64 `json:"goroutine_growth_pct"` // percent
	GoroutineSlack  float64 `json:"goroutine_slack"`      // goroutines allowed on top, for small counts
}

// soakWarmup is the share of the samples, at least one, that the growth
// check leaves out: caches, pools and buffers fill during it.
const soakWarmup = 0.1

// soakDrain is how long the soak waits after the load for the events in
// flight to arrive.
const soakDrain = 10 * time.Second

func soakFlags(fs *flag.FlagSet, c *soakConfig, admin *string) {
	fs.DurationVar(&c.duration, "soak-duration", 30*time.Minute, "soak scenario: length of the run")
	fs.Float64Var(&c.rate, "soak-rate", 500, "soak scenario: unicast Notify rate, calls a second, open loop")
	fs.IntVar(&c.conns, "soak-conns", 2000, "soak scenario: connections (users) held")
	fs.DurationVar(&c.sample, "soak-sample", 30*time.Second, "soak scenario: interval between samples")
	fs.StringVar(admin, "admin", "", "soak scenario: admin listeners (host:port or URL) to read go_goroutines from, comma-separated (not with -self)")
	fs.Float64Var(&c.limits.RSSGrowth, "soak-rss-growth", 20, "soak scenario: RSS growth allowed, percent")
	fs.Float64Var(&c.limits.GoroutineGrowth, "soak-goroutine-growth", 10, "soak scenario: goroutine growth allowed, percent")
	fs.Float64Var(&c.limits.GoroutineSlack, "soak-goroutine-slack", 50, "soak scenario: goroutines allowed on top of -soak-goroutine-growth")
	fs.IntVar(&c.maxLost, "soak-max-lost", 0, "soak scenario: events allowed missing at the end, after the ones in flight arrived")
}

// validate checks the soak flags and parses admin.
func (c *soakConfig) validate(admin string) error {
	for a := range strings.SplitSeq(admin, ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.admin = append(c.admin, metricsURL(a))
		}
	}
	if !c.on {
		return nil
	}
	if c.duration <= 0 || c.sample <= 0 || c.rate <= 0 || c.conns < 1 || c.maxLost < 0 {
		return errors.New("soak: -soak-duration, -soak-sample, -soak-rate and -soak-conns must be positive")
	}
	if n := c.samples(); n < 3 {
		return fmt.Errorf("soak: -soak-duration %s holds %d samples of -soak-sample %s; need at least 3", c.duration, n, c.sample)
	}
	return nil
}

// samples is how many samples the run takes: one at the end of each
// interval, the last one possibly shorter.
func (c *soakConfig) samples() int {
	return int((c.duration + c.sample - 1) / c.sample)
}

// metricsURL makes an -admin entry a /metrics URL: host:port gets http://,
// a URL without a path gets /metrics.
func metricsURL(a string) string {
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	if u, err := url.Parse(a); err == nil && (u.Path == "" || u.Path == "/") {
		u.Path = "/metrics"
		return u.String()
	}
	return a
}

// soakSample is one reading of the series. RSS and Goroutines are 0 when
// they could not be read.
type soakSample struct {
	Elapsed    time.Duration `json:"elapsed_ns"`
	RSS        int64         `json:"rss_bytes"`  // the edge's, or this process's with -self
	Goroutines int           `json:"goroutines"` // summed over -admin, or this process's with -self
	Sent       int           `json:"sent"`       // Notify calls made so far
	Failed     int           `json:"failed"`     // of which returned an error
	Delivered  uint64        `json:"delivered"`  // events received so far
	P99        time.Duration `json:"p99_ns"`     // Notify→receive p99 of the events received in this interval
}

// soakResult is the series and its verdict, as -json writes it.
type soakResult struct {
	Rate      float64      `json:"rate"`
	Conns     int          `json:"conns"`
	Measured  string       `json:"rss_of"`
	Limits    soakLimits   `json:"limits"`
	Samples   []soakSample `json:"samples"`
	Growth    soakGrowth   `json:"growth"`
	Sent      int          `json:"sent"`
	Failed    int          `json:"failed"`
	Abandoned int          `json:"abandoned"`
	Delivered uint64       `json:"delivered"` // at the end, after the drain
	Failures  []string     `json:"failures,omitempty"`
}

// soakGrowth is what checkGrowth compared: the means of the first and the
// last Window samples after the first Warmup ones (0 when not read).
type soakGrowth struct {
	Warmup          int     `json:"warmup_samples"`
	Window          int     `json:"window_samples"`
	RSSFirst        float64 `json:"rss_first_bytes"`
	RSSLast         float64 `json:"rss_last_bytes"`
	GoroutinesFirst float64 `json:"goroutines_first"`
	GoroutinesLast  float64 `json:"goroutines_last"`
}

func growthPct(first, last float64) float64 { return (last - first) / first * 100 }

func (g soakGrowth) String() string {
	var parts []string
	if g.RSSFirst > 0 && g.RSSLast > 0 {
		parts = append(parts, fmt.Sprintf("RSS %.1f → %.1f MiB (%+.1f%%)", g.RSSFirst/(1<<20), g.RSSLast/(1<<20), growthPct(g.RSSFirst, g.RSSLast)))
	}
	if g.GoroutinesFirst > 0 && g.GoroutinesLast > 0 {
		parts = append(parts, fmt.Sprintf("goroutines %.0f → %.0f (%+.1f%%)", g.GoroutinesFirst, g.GoroutinesLast, growthPct(g.GoroutinesFirst, g.GoroutinesLast)))
	}
	if len(parts) == 0 {
		return "nothing to compare"
	}
	return fmt.Sprintf("%s: mean of the first %d sample(s) after %d of warm-up against the last %d", strings.Join(parts, ", "), g.Window, g.Warmup, g.Window)
}

// checkGrowth judges a series: it leaves out the warm-up (the first 10% of
// the samples, at least one), then compares the mean of the last quarter of
// the rest with the mean of its first quarter. RSS growing more than
// RSSGrowth percent, or goroutines more than GoroutineGrowth percent plus
// GoroutineSlack, is an error. Samples where a figure was not read (0) are
// left out of its means; a figure never read is not judged.
func checkGrowth(series []soakSample, lim soakLimits) (soakGrowth, error) {
	var g soakGrowth
	g.Warmup = max(1, int(float64(len(series))*soakWarmup))
	if len(series)-g.Warmup < 2 {
		return g, fmt.Errorf("%d samples: too few to judge growth after %d of warm-up", len(series), g.Warmup)
	}
	rest := series[g.Warmup:]
	g.Window = max(1, len(rest)/4)
	first, last := rest[:g.Window], rest[len(rest)-g.Window:]
	rss := func(s soakSample) float64 { return float64(s.RSS) }
	gor := func(s soakSample) float64 { return float64(s.Goroutines) }
	g.RSSFirst, g.RSSLast = meanKnown(first, rss), meanKnown(last, rss)
	g.GoroutinesFirst, g.GoroutinesLast = meanKnown(first, gor), meanKnown(last, gor)
	var problems []string
	if g.RSSFirst > 0 && g.RSSLast > g.RSSFirst*(1+lim.RSSGrowth/100) {
		problems = append(problems, fmt.Sprintf("RSS grew %.1f%% (%.1f → %.1f MiB), more than the %g%% allowed",
			growthPct(g.RSSFirst, g.RSSLast), g.RSSFirst/(1<<20), g.RSSLast/(1<<20), lim.RSSGrowth))
	}
	if g.GoroutinesFirst > 0 && g.GoroutinesLast > g.GoroutinesFirst*(1+lim.GoroutineGrowth/100)+lim.GoroutineSlack {
		problems = append(problems, fmt.Sprintf("goroutines grew %.1f%% (%.0f → %.0f), more than the %g%% + %g allowed",
			growthPct(g.GoroutinesFirst, g.GoroutinesLast), g.GoroutinesFirst, g.GoroutinesLast, lim.GoroutineGrowth, lim.GoroutineSlack))
	}
	if len(problems) > 0 {
		return g, errors.New(strings.Join(problems, "; "))
	}
	return g, nil
}

// meanKnown is the mean of the non-zero values of f over ss, 0 when none.
func meanKnown(ss []soakSample, f func(soakSample) float64) float64 {
	var sum float64
	var n int
	for _, s := range ss {
		if v := f(s); v > 0 {
			sum += v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// soak holds -soak-conns connections and sends -soak-rate Notify a second
// for -soak-duration, sampling the edge's RSS, the goroutines, sent against
// delivered and the interval's latency every -soak-sample. The open-loop
// schedule restarts at each interval, so that its memory stays bounded and
// the workers are gone when a sample is read. The error says what grew.
func (b *bench) soak(ctx context.Context) (*soakResult, error) {
	sc := b.cfg.soak
	for k, v := range map[string]string{
		"soak-duration": sc.duration.String(), "soak-rate": formatValue(sc.rate), "soak-conns": strconv.Itoa(sc.conns),
		"soak-sample": sc.sample.String(), "admin": strings.Join(sc.admin, ","),
	} {
		b.rep.Settings[k] = v
	}
	prefix := b.tag + "-soak-"
	b.progress("soak: opening %d connections", sc.conns)
	f, err := openFleet(ctx, b.fleetConfig(prefix, sc.conns, ""))
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	defer f.close()
	res := &soakResult{Rate: sc.rate, Conns: f.conns, Limits: sc.limits}
	edge, haveEdge := b.proc("edge")
	if haveEdge {
		res.Measured = edge.Name
	} else {
		b.rep.note("soak: no edge process to read RSS of (-pids edge=PID): RSS not judged")
	}
	if b.sys == nil && len(sc.admin) == 0 {
		b.rep.note("soak: no -admin listener to read go_goroutines from: goroutines not judged")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	call := b.notifier(prefix, f.conns)
	prev := &hist{}
	n := sc.samples()
	b.progress("soak: %s/s for %s, a sample every %s", formatValue(sc.rate), sc.duration, sc.sample)
	start := time.Now()
	for k := range n {
		d := min(sc.sample, sc.duration-time.Duration(k)*sc.sample)
		r := openLoop(ctx, sc.rate, d, b.cfg.workers, call)
		if ctx.Err() != nil {
			return res, fmt.Errorf("soak: %w after %d of %d samples", ctx.Err(), len(res.Samples), n)
		}
		res.Sent += r.Sent
		res.Failed += r.Failed
		res.Abandoned += r.Abandoned
		if r.FirstErr != "" && res.Failed == r.Failed {
			b.rep.note("soak: first failure: %s", r.FirstErr)
		}
		s := soakSample{Elapsed: time.Since(start), Sent: res.Sent, Failed: res.Failed}
		got, err := f.report()
		if err != nil {
			return res, fmt.Errorf("soak: %w", err)
		}
		s.Delivered = got.Received
		iv := got.Latency.since(prev)
		s.P99, prev = iv.quantile(0.99), got.Latency
		if b.sys != nil {
			// Live memory, as the idle scenario reads it: without the
			// garbage GOGC lets accumulate, which would hide a slow leak
			// under its sawtooth.
			freeMemory()
			s.Goroutines = runtime.NumGoroutine()
		} else if len(sc.admin) > 0 {
			g, err := scrapeGoroutines(ctx, client, sc.admin)
			if err != nil {
				b.rep.note("soak: sample %d: %v", k+1, err)
			}
			s.Goroutines = g
		}
		if haveEdge {
			if p, err := readProc(edge.PID); err == nil {
				s.RSS = p.RSS
			}
		}
		res.Samples = append(res.Samples, s)
		b.progress("soak: %s RSS %.1f MiB, %d goroutines, sent %d, delivered %d, p99 %.2f ms",
			formatElapsed(s.Elapsed), float64(s.RSS)/(1<<20), s.Goroutines, s.Sent, s.Delivered, ms(s.P99))
	}
	got, err := f.waitReceived(uint64(res.Sent), soakDrain)
	if err != nil {
		return res, fmt.Errorf("soak: %w", err)
	}
	res.Delivered = got.Received
	res.Growth, err = checkGrowth(res.Samples, sc.limits)
	if err != nil {
		res.Failures = append(res.Failures, err.Error())
	}
	if lost := res.Sent - int(min(res.Delivered, uint64(res.Sent))); lost > sc.maxLost {
		res.Failures = append(res.Failures, fmt.Sprintf("delivered %d of %d sent (%d calls failed) %s after the load stopped, %d missing, more than the %d allowed",
			res.Delivered, res.Sent, res.Failed, soakDrain, lost, sc.maxLost))
	}
	b.soakRows(res, got)
	if len(res.Failures) > 0 {
		return res, fmt.Errorf("soak failed: %s", strings.Join(res.Failures, "; "))
	}
	b.rep.note("soak: passed: %s; delivered %d of %d sent", res.Growth, res.Delivered, res.Sent)
	return res, nil
}

func (b *bench) soakRows(res *soakResult, last reply) {
	const sc = "soak"
	b.rep.add(sc, "connections held", float64(res.Conns), "conns")
	b.rep.add(sc, "samples", float64(len(res.Samples)), "samples")
	b.rep.add(sc, "sent", float64(res.Sent), "calls")
	b.rep.add(sc, "failed", float64(res.Failed), "calls")
	b.rep.add(sc, "abandoned (never sent: an interval overran)", float64(res.Abandoned), "calls")
	b.rep.addVs(sc, "delivered", float64(res.Delivered), "events", float64(res.Sent), "sent")
	b.rep.add(sc, "connections the edge closed", float64(last.Closed), "conns")
	b.rep.add(sc, "Notify→receive p99, whole run", ms(last.Latency.quantile(0.99)), "ms")
	var worst time.Duration
	for _, s := range res.Samples {
		worst = max(worst, s.P99)
	}
	b.rep.add(sc, "Notify→receive p99, worst interval", ms(worst), "ms")
	g := res.Growth
	if g.RSSFirst > 0 && g.RSSLast > 0 {
		b.rep.add(sc, res.Measured+" RSS, first quarter after warm-up", g.RSSFirst/(1<<20), "MiB")
		b.rep.addVs(sc, res.Measured+" RSS, last quarter", g.RSSLast/(1<<20), "MiB", g.RSSFirst/(1<<20), "first quarter")
	}
	if g.GoroutinesFirst > 0 && g.GoroutinesLast > 0 {
		b.rep.add(sc, "goroutines, first quarter after warm-up", g.GoroutinesFirst, "goroutines")
		b.rep.addVs(sc, "goroutines, last quarter", g.GoroutinesLast, "goroutines", g.GoroutinesFirst, "first quarter")
	}
}

// since is the histogram of what h recorded after prev, an earlier state of
// the same histogram. Its maximum is h's, an upper bound.
func (h *hist) since(prev *hist) *hist {
	d := &hist{Counts: map[int]uint64{}, Max: h.Max, Sum: h.Sum - prev.Sum}
	for i, c := range h.Counts {
		if c > prev.Counts[i] {
			d.Counts[i] = c - prev.Counts[i]
			d.N += c - prev.Counts[i]
		}
	}
	return d
}

// scrapeGoroutines sums go_goroutines over the admin listeners.
func scrapeGoroutines(ctx context.Context, client *http.Client, urls []string) (int, error) {
	var sum float64
	for _, u := range urls {
		v, err := scrapeGauge(ctx, client, u, "go_goroutines")
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return int(sum), nil
}

func scrapeGauge(ctx context.Context, client *http.Client, u, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", u, err)
	}
	fam, ok := fams[name]
	if !ok || len(fam.GetMetric()) == 0 {
		return 0, fmt.Errorf("GET %s: no %s", u, name)
	}
	return fam.GetMetric()[0].GetGauge().GetValue(), nil
}

func formatElapsed(d time.Duration) string {
	return fmt.Sprintf("%d:%04.1f", int(d.Minutes()), math.Mod(d.Seconds(), 60))
}

// print writes the series as a table; nothing for a run without a soak.
func (r *soakResult) print(w io.Writer) {
	if r == nil || len(r.Samples) == 0 {
		return
	}
	fmt.Fprintf(w, "\nsoak series: %s Notify/s over %d connections; RSS of %s; p99 is Notify→receive of the interval\n",
		formatValue(r.Rate), r.Conns, cmp.Or(r.Measured, "(not read)"))
	t := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(t, "elapsed\tRSS MiB\tgoroutines\tsent\tfailed\tdelivered\tp99 ms\t")
	for _, s := range r.Samples {
		fmt.Fprintf(t, "%s\t%.1f\t%d\t%d\t%d\t%d\t%.2f\t\n", formatElapsed(s.Elapsed), float64(s.RSS)/(1<<20),
			s.Goroutines, s.Sent, s.Failed, s.Delivered, ms(s.P99))
	}
	t.Flush()
	fmt.Fprintf(w, "growth: %s\n", r.Growth)
	for _, f := range r.Failures {
		fmt.Fprintln(w, "FAIL:", f)
	}
}

// writeReport writes the report, and the soak's series when there is one,
// to path as JSON.
func writeReport(path string, rep *report, soak *soakResult) error {
	if soak == nil {
		return rep.writeJSON(path)
	}
	b, err := json.MarshalIndent(struct {
		*report
		Soak *soakResult `json:"soak"`
	}{rep, soak}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
