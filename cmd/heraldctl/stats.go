package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/herald-push/herald/cmd/internal/daemon"
)

// statsCmd scrapes the binaries' admin /metrics endpoints twice, interval
// apart, and prints rates from the counters' increase, the gauges' current
// values, 99th percentiles from the histograms' bucket increases, and each
// endpoint's readiness.
func statsCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: heraldctl stats [-router ADDRS] [-edge ADDRS] [-worker ADDRS] [flags]

Without any address it reads the binaries' default admin addresses on this
host: 127.0.0.1:9090 (router, or the all-in-one herald), 127.0.0.1:9091 (edge)
and 127.0.0.1:9093 (FCM worker).
`)
		fs.PrintDefaults()
	}
	var (
		routers  = fs.String("router", "", "router admin addresses, comma-separated")
		edges    = fs.String("edge", "", "SSE edge admin addresses, comma-separated")
		workers  = fs.String("worker", "", "FCM worker admin addresses, comma-separated")
		interval = fs.Duration("interval", 5*time.Second, "time between the two scrapes that rates are computed from")
		timeout  = fs.Duration("timeout", 5*time.Second, "time limit of each request to an endpoint")
		asJSON   = fs.Bool("json", false, "print JSON instead of a summary")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	eps := endpointsFrom(map[string]string{"router": *routers, "edge": *edges, "worker": *workers})
	if *interval <= 0 {
		return errors.New("-interval must be above 0")
	}
	ctx := context.Background()
	client := &http.Client{Timeout: *timeout}
	before := scrapeAll(ctx, client, eps)
	time.Sleep(*interval)
	after := scrapeAll(ctx, client, eps)
	checkReady(ctx, client, eps)
	rep := summarize(eps, before, after)
	if *asJSON {
		return writeJSON(stdout, rep)
	}
	return printStats(stdout, rep)
}

// endpoint is one admin listener. An address given for several roles (the
// all-in-one binary serves every metric on one listener) is one endpoint.
type endpoint struct {
	Addr  string   `json:"addr"`
	Roles []string `json:"roles"`
	Ready bool     `json:"ready"`
	// Status is "ready", or why the endpoint is not ready or not scraped.
	Status string `json:"status"`
}

// defaultAdmin is each binary's default admin address, scraped when no
// address is given: the binaries on this host. (The all-in-one herald serves
// every metric on the router's.)
var defaultAdmin = map[string]string{"router": "127.0.0.1:9090", "edge": "127.0.0.1:9091", "worker": "127.0.0.1:9093"}

func endpointsFrom(byRole map[string]string) []*endpoint {
	if strings.TrimSpace(byRole["router"]+byRole["edge"]+byRole["worker"]) == "" {
		byRole = defaultAdmin
	}
	var out []*endpoint
	seen := map[string]*endpoint{}
	for _, role := range []string{"router", "edge", "worker"} {
		for _, addr := range strings.Split(byRole[role], ",") {
			if addr = strings.TrimSpace(addr); addr == "" {
				continue
			}
			if ep, ok := seen[addr]; ok {
				ep.Roles = append(ep.Roles, role)
				continue
			}
			ep := &endpoint{Addr: addr, Roles: []string{role}}
			seen[addr] = ep
			out = append(out, ep)
		}
	}
	return out
}

// url is the address of one of ep's pages: addr may be host:port or a URL.
func (ep *endpoint) url(path string) string {
	base := ep.Addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimSuffix(base, "/") + path
}

// scrape is one read of an endpoint's /metrics.
type scrape struct {
	at   time.Time
	fams map[string]*dto.MetricFamily
	err  error
}

// scrapeAll reads every endpoint's metrics at once, in the order of eps.
func scrapeAll(ctx context.Context, client *http.Client, eps []*endpoint) []scrape {
	out := make([]scrape, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { out[i] = scrapeMetrics(ctx, client, ep.url("/metrics")) })
	}
	wg.Wait()
	return out
}

func scrapeMetrics(ctx context.Context, client *http.Client, url string) scrape {
	s := scrape{at: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		s.err = err
		return s
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		s.err = err
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.err = fmt.Errorf("GET %s: %s", url, resp.Status)
		return s
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	s.fams, s.err = parser.TextToMetricFamilies(resp.Body)
	if s.err != nil {
		s.err = fmt.Errorf("GET %s: %w", url, s.err)
	}
	return s
}

// checkReady asks each endpoint's /readyz, at once, and records the answer.
func checkReady(ctx context.Context, client *http.Client, eps []*endpoint) {
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.url("/readyz"), nil)
			if err != nil {
				ep.Status = err.Error()
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				ep.Status = "unreachable: " + err.Error()
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			if resp.StatusCode == http.StatusOK {
				ep.Ready, ep.Status = true, "ready"
				return
			}
			msg := strings.TrimSpace(string(body))
			if msg == "" {
				msg = resp.Status
			}
			ep.Status = msg
		})
	}
	wg.Wait()
}

// statsReport is what "heraldctl stats" shows. Rates are per second; a
// section is present when an endpoint serves its metrics.
type statsReport struct {
	IntervalSeconds float64      `json:"intervalSeconds"`
	Endpoints       []*endpoint  `json:"endpoints"`
	Router          *routerStats `json:"router,omitempty"`
	Edge            *edgeStats   `json:"edge,omitempty"`
	Worker          *workerStats `json:"worker,omitempty"`
}

type routerStats struct {
	Notify           float64            `json:"notifyPerSecond"`
	NotifyByRoute    map[string]float64 `json:"notifyPerSecondByRoute"`
	NotifyErrors     float64            `json:"notifyErrorsPerSecond"`
	NotifyErrorsCode map[string]float64 `json:"notifyErrorsPerSecondByCode"` // every code but OK
	NotifyP99        *float64           `json:"notifyP99Seconds"`            // null: no Notify in the interval
	RedisErrors      float64            `json:"redisErrorsPerSecond"`
	KafkaErrors      float64            `json:"kafkaErrorsPerSecond"`
}

type edgeStats struct {
	ConnectionsOpen float64            `json:"connectionsOpen"`
	Closes          float64            `json:"closesPerSecond"`
	ClosesByReason  map[string]float64 `json:"closesPerSecondByReason"`
	Refused         float64            `json:"refusedPerSecond"`
	RefusedByCode   map[string]float64 `json:"refusedPerSecondByCode"`
	EventsWritten   float64            `json:"eventsWrittenPerSecond"`
	DeliveryP99     *float64           `json:"deliveryLatencyP99Seconds"` // null: nothing written in the interval
	PresenceErrors  float64            `json:"presenceErrorsPerSecond"`
}

type workerStats struct {
	Messages          float64            `json:"messagesPerSecond"`
	MessagesByOutcome map[string]float64 `json:"messagesPerSecondByOutcome"`
	Retries           float64            `json:"retriesPerSecond"`
	RetriesByCode     map[string]float64 `json:"retriesPerSecondByCode"`
	DeadLetters       float64            `json:"deadLettersPerSecond"`
	DeadLettersByCode map[string]float64 `json:"deadLettersPerSecondByCode"`
	ConsumerLag       float64            `json:"consumerLagMessages"`
}

// summarize computes the report from two scrapes of eps. An endpoint that
// failed either scrape counts in none of the figures; its status says why.
func summarize(eps []*endpoint, before, after []scrape) statsReport {
	var w window
	for i, ep := range eps {
		switch {
		case before[i].err != nil:
			ep.Ready, ep.Status = false, "scrape failed: "+before[i].err.Error()
		case after[i].err != nil:
			ep.Ready, ep.Status = false, "scrape failed: "+after[i].err.Error()
		default:
			w = append(w, [2]scrape{before[i], after[i]})
		}
	}
	rep := statsReport{Endpoints: eps}
	if len(w) > 0 {
		rep.IntervalSeconds = w.seconds()
	}
	if w.has("herald_router_") {
		r := &routerStats{}
		r.Notify, r.NotifyByRoute = w.rate("herald_router_notify_total", "route")
		_, r.NotifyErrorsCode = w.rate("herald_router_notify_total", "code")
		delete(r.NotifyErrorsCode, "OK")
		for _, v := range r.NotifyErrorsCode {
			r.NotifyErrors += v
		}
		r.NotifyP99 = w.quantile("herald_router_notify_duration_seconds", 0.99)
		r.RedisErrors, _ = w.rate("herald_router_redis_errors_total", "")
		r.KafkaErrors, _ = w.rate("herald_router_kafka_errors_total", "")
		rep.Router = r
	}
	if w.has("herald_sse_") {
		e := &edgeStats{ConnectionsOpen: w.gauge("herald_sse_connections_open")}
		e.Closes, e.ClosesByReason = w.rate("herald_sse_connections_closed_total", "reason")
		e.Refused, e.RefusedByCode = w.rate("herald_sse_connections_refused_total", "code")
		e.EventsWritten, _ = w.rate("herald_sse_events_written_total", "")
		e.DeliveryP99 = w.quantile("herald_sse_delivery_latency_seconds", 0.99)
		e.PresenceErrors, _ = w.rate("herald_sse_presence_errors_total", "")
		rep.Edge = e
	}
	if w.has("herald_fcm_") {
		f := &workerStats{ConsumerLag: w.gauge("herald_fcm_consumer_lag_messages")}
		f.Messages, f.MessagesByOutcome = w.rate("herald_fcm_messages_total", "outcome")
		f.Retries, f.RetriesByCode = w.rate("herald_fcm_retries_total", "code")
		f.DeadLetters, f.DeadLettersByCode = w.rate("herald_fcm_dead_letters_total", "code")
		rep.Worker = f
	}
	return rep
}

// window is the pairs of scrapes (before, after) of the endpoints that
// answered both.
type window [][2]scrape

// seconds is the mean time between the pairs' scrapes.
func (w window) seconds() float64 {
	var sum float64
	for _, p := range w {
		sum += p[1].at.Sub(p[0].at).Seconds()
	}
	return sum / float64(len(w))
}

// has reports whether any endpoint serves a metric whose name starts with
// prefix.
func (w window) has(prefix string) bool {
	for _, p := range w {
		for name := range p[1].fams {
			if strings.HasPrefix(name, prefix) {
				return true
			}
		}
	}
	return false
}

// rate is the per-second increase of counter name over the window, summed
// over the endpoints: in total, and by the value of label by (when by is
// set). Each endpoint's increase is divided by its own time between scrapes.
// A series absent from the first scrape started at zero; one that went down
// was reset (the process restarted) and counts from zero.
func (w window) rate(name, by string) (total float64, byLabel map[string]float64) {
	byLabel = map[string]float64{}
	for _, p := range w {
		secs := p[1].at.Sub(p[0].at).Seconds()
		fam := p[1].fams[name]
		if secs <= 0 || fam == nil {
			continue
		}
		prev := map[string]float64{}
		if old := p[0].fams[name]; old != nil {
			for _, m := range old.GetMetric() {
				prev[labelKey(m)] = value(m)
			}
		}
		for _, m := range fam.GetMetric() {
			d := value(m) - prev[labelKey(m)]
			if d < 0 {
				d = value(m)
			}
			total += d / secs
			if by != "" {
				byLabel[label(m, by)] += d / secs
			}
		}
	}
	return total, byLabel
}

// gauge is the sum of gauge name's series in the second scrapes.
func (w window) gauge(name string) float64 {
	var sum float64
	for _, p := range w {
		for _, m := range p[1].fams[name].GetMetric() {
			sum += value(m)
		}
	}
	return sum
}

// quantile is the q-quantile of histogram name's observations during the
// window, from the increase of its buckets summed over the endpoints, as
// Prometheus' histogram_quantile computes it; nil when nothing was observed.
func (w window) quantile(name string, q float64) *float64 {
	buckets := map[float64]float64{} // upper bound → cumulative increase
	for _, p := range w {
		prev := map[string]*dto.Histogram{}
		if old := p[0].fams[name]; old != nil {
			for _, m := range old.GetMetric() {
				prev[labelKey(m)] = m.GetHistogram()
			}
		}
		for _, m := range p[1].fams[name].GetMetric() {
			h, old := m.GetHistogram(), prev[labelKey(m)]
			if old != nil && count(old.GetSampleCount(), old.GetSampleCountFloat()) > count(h.GetSampleCount(), h.GetSampleCountFloat()) {
				old = nil // reset
			}
			oldCum := map[float64]float64{}
			for _, b := range old.GetBucket() {
				oldCum[b.GetUpperBound()] = count(b.GetCumulativeCount(), b.GetCumulativeCountFloat())
			}
			for _, b := range h.GetBucket() {
				if ub := b.GetUpperBound(); !math.IsInf(ub, 1) {
					buckets[ub] += count(b.GetCumulativeCount(), b.GetCumulativeCountFloat()) - oldCum[ub]
				}
			}
			// The +Inf bucket is the count, whether or not it is listed.
			buckets[math.Inf(1)] += count(h.GetSampleCount(), h.GetSampleCountFloat()) -
				count(old.GetSampleCount(), old.GetSampleCountFloat())
		}
	}
	v, ok := bucketQuantile(q, buckets)
	if !ok {
		return nil
	}
	return &v
}

// bucketQuantile interpolates the q-quantile linearly within the bucket it
// falls in. When it falls in the +Inf bucket, it is the highest finite
// bound, as Prometheus has it.
func bucketQuantile(q float64, buckets map[float64]float64) (float64, bool) {
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return 0, false
	}
	cum := make([]float64, len(bounds))
	for i, b := range bounds {
		cum[i] = buckets[b]
		if i > 0 && cum[i] < cum[i-1] {
			cum[i] = cum[i-1] // a bucket that reset on one endpoint only
		}
	}
	total := cum[len(cum)-1]
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	i, _ := slices.BinarySearchFunc(cum, rank, cmp.Compare[float64])
	if math.IsInf(bounds[i], 1) {
		if i == 0 {
			return 0, false
		}
		return bounds[i-1], true
	}
	lower, below := 0.0, 0.0
	if i > 0 {
		lower, below = bounds[i-1], cum[i-1]
	}
	return lower + (bounds[i]-lower)*(rank-below)/(cum[i]-below), true
}

// count reads a count that the text format gives as an integer or a float.
func count(n uint64, f float64) float64 { return float64(n) + f }

// value is a counter's, gauge's or untyped sample's value.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}

// labelKey identifies a series within its family.
func labelKey(m *dto.Metric) string {
	pairs := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		pairs = append(pairs, l.GetName()+"="+l.GetValue())
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "\xff")
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func printStats(w io.Writer, rep statsReport) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "herald stats: rates per second over %s, %d endpoint(s)\n\n",
		duration(time.Duration(rep.IntervalSeconds*float64(time.Second))), len(rep.Endpoints))
	fmt.Fprintln(tw, "ENDPOINT\tROLE\tSTATUS")
	for _, ep := range rep.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ep.Addr, strings.Join(ep.Roles, ","), ep.Status)
	}
	// The sections are one block of cells, so that their columns align:
	// headings and blank lines have empty cells too.
	section := func(name string) { fmt.Fprintf(tw, "\t\t\n%s\t\t\n", name) }
	line := func(name, v string, by map[string]float64) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, v, breakdown(by))
	}
	fmt.Fprintln(tw)
	if r := rep.Router; r != nil {
		section("ROUTER")
		line("notify/s", num(r.Notify), r.NotifyByRoute)
		line("notify errors/s", num(r.NotifyErrors), r.NotifyErrorsCode)
		line("notify p99", seconds(r.NotifyP99), nil)
		line("redis errors/s", num(r.RedisErrors), nil)
		line("kafka errors/s", num(r.KafkaErrors), nil)
	}
	if e := rep.Edge; e != nil {
		section("SSE EDGE")
		line("connections open", num(e.ConnectionsOpen), nil)
		line("closes/s", num(e.Closes), e.ClosesByReason)
		line("refused/s", num(e.Refused), e.RefusedByCode)
		line("events written/s", num(e.EventsWritten), nil)
		line("delivery p99", seconds(e.DeliveryP99), nil)
		line("presence errors/s", num(e.PresenceErrors), nil)
	}
	if f := rep.Worker; f != nil {
		section("FCM WORKER")
		line("messages/s", num(f.Messages), f.MessagesByOutcome)
		line("retries/s", num(f.Retries), f.RetriesByCode)
		line("dead letters/s", num(f.DeadLetters), f.DeadLettersByCode)
		line("consumer lag", num(f.ConsumerLag), nil)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Drop the padding that empty last cells leave, and the blank line
	// that opens the sections.
	var out strings.Builder
	blank := 0
	for l := range strings.Lines(buf.String()) {
		l = strings.TrimRight(l, " \n")
		if l == "" {
			if blank++; blank > 1 {
				continue
			}
		} else {
			blank = 0
		}
		out.WriteString(l + "\n")
	}
	_, err := io.WriteString(w, out.String())
	return err
}

// breakdown renders the non-zero rates, the largest first.
func breakdown(by map[string]float64) string {
	keys := make([]string, 0, len(by))
	for k, v := range by {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(by[b], by[a]), strings.Compare(a, b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = orDash(k) + " " + num(by[k])
	}
	return strings.Join(parts, ", ")
}

// num renders a rate or a gauge with at most two decimals.
func num(v float64) string {
	if v != 0 && math.Abs(v) < 0.005 {
		return "<0.01"
	}
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64)
}

// seconds renders a latency, or "-" when nothing was observed.
func seconds(v *float64) string {
	if v == nil {
		return "-"
	}
	d := time.Duration(*v * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}
