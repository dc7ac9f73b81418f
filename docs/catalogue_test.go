package docs_test

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docMetric is one metric of docs/metrics.md.
type docMetric struct {
	name, typ string
	labels    []string
	// values are the code spans of the metric's meaning: the documented
	// values of its labels.
	values map[string]bool
}

// catalogue is docs/metrics.md, by metric name.
type catalogue map[string]*docMetric

func readCatalogue(t *testing.T) catalogue {
	t.Helper()
	src, err := os.ReadFile(metricsPath)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(herald_[a-z_]+)` \\| (counter|gauge|histogram) \\|([^|]*)\\| (.*) \\|$")
	code := regexp.MustCompile("`([^`]+)`")
	reason := regexp.MustCompile("^\\| `([a-z_]+)` \\|")
	cat := catalogue{}
	var reasons []string
	inReasons := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "#") {
			inReasons = strings.TrimSpace(line) == "### Close reasons"
		}
		if strings.HasPrefix(line, "| `herald_") && !row.MatchString(line) {
			t.Fatalf("docs/metrics.md: a metric row this test cannot read (| `name` | type | labels | meaning |): %s", line)
		}
		if m := row.FindStringSubmatch(line); m != nil {
			d := &docMetric{name: m[1], typ: m[2], values: map[string]bool{}}
			for _, l := range code.FindAllStringSubmatch(m[3], -1) {
				d.labels = append(d.labels, l[1])
			}
			for _, v := range code.FindAllStringSubmatch(m[4], -1) {
				d.values[v[1]] = true
			}
			cat[d.name] = d
		} else if m := reason.FindStringSubmatch(line); inReasons && m != nil {
			reasons = append(reasons, m[1])
		}
	}
	closed := cat["herald_sse_connections_closed_total"]
	if closed == nil || len(reasons) == 0 {
		t.Fatal("docs/metrics.md: herald_sse_connections_closed_total or the close reasons table not found")
	}
	for _, r := range reasons {
		closed.values[r] = true
	}
	return cat
}

// resolve finds the documented metric of a series name: the metric itself,
// or a histogram's _bucket, _sum or _count series.
func (c catalogue) resolve(series string) (m *docMetric, suffix string) {
	if m := c[series]; m != nil {
		return m, ""
	}
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if m := c[strings.TrimSuffix(series, s)]; m != nil && m.typ == "histogram" && strings.HasSuffix(series, s) {
			return m, s
		}
	}
	return nil, ""
}

// isSeriesPrefix reports whether p starts the name of a series Herald
// exposes.
func (c catalogue) isSeriesPrefix(p string) bool {
	for name, m := range c {
		names := []string{name}
		if m.typ == "histogram" {
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		}
		for _, n := range names {
			if strings.HasPrefix(n, p) {
				return true
			}
		}
	}
	return false
}

// Labels of a closed set, whose values docs/metrics.md lists, so that a typo
// in a matcher is caught. The other labels' values are open (gRPC and FCM
// codes, topics, partitions).
var closedLabels = map[string]bool{"route": true, "outcome": true, "reason": true, "change": true}

// Labels Prometheus adds to every scraped series.
var targetLabels = map[string]bool{"instance": true, "job": true}

var (
	metricName   = regexp.MustCompile(`herald_[a-z_]+`)
	selector     = regexp.MustCompile(`(herald_[a-z_]+)\s*\{([^}]*)\}`)
	matcher      = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	grouping     = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	simpleRegexp = regexp.MustCompile(`^[A-Za-z0-9_.]+(\|[A-Za-z0-9_.]+)*$`)
)

// check lists what is wrong in a PromQL expression against docs/metrics.md:
// undocumented metrics, labels and label values, and metrics used against
// their type (a counter outside rate or increase, a gauge inside one, a
// histogram's buckets outside histogram_quantile).
func (c catalogue) check(expr string) []string {
	var problems []string
	labelsHere := map[string]bool{"le": true}
	maps.Copy(labelsHere, targetLabels)
	for _, loc := range metricName.FindAllStringIndex(expr, -1) {
		series := expr[loc[0]:loc[1]]
		m, suffix := c.resolve(series)
		if m == nil {
			problems = append(problems, fmt.Sprintf("%s is not in docs/metrics.md", series))
			continue
		}
		for _, l := range m.labels {
			labelsHere[l] = true
		}
		before := strings.TrimRight(expr[:loc[0]], " \t\n")
		inRate := strings.HasSuffix(before, "rate(") || strings.HasSuffix(before, "increase(")
		switch {
		case m.typ == "histogram" && suffix == "":
			problems = append(problems, fmt.Sprintf("%s is a histogram: use its _bucket, _sum or _count series", series))
		case suffix == "_bucket" && !strings.Contains(expr, "histogram_quantile("):
			problems = append(problems, fmt.Sprintf("%s: buckets go through histogram_quantile", series))
		case (m.typ == "counter" || suffix != "") && !inRate && !strings.HasSuffix(before, "absent("):
			problems = append(problems, fmt.Sprintf("%s is a counter: use it in rate() or increase()", series))
		case m.typ == "gauge" && inRate:
			problems = append(problems, fmt.Sprintf("%s is a gauge: rate() and increase() are for counters", series))
		}
	}
	for _, sel := range selector.FindAllStringSubmatch(expr, -1) {
		m, suffix := c.resolve(sel[1])
		if m == nil {
			continue
		}
		for _, mt := range matcher.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := mt[1], mt[2], mt[3]
			switch {
			case targetLabels[label], label == "le" && suffix == "_bucket":
				continue
			case !slices.Contains(m.labels, label):
				problems = append(problems, fmt.Sprintf("%s has no label %q (docs/metrics.md: %q)", m.name, label, m.labels))
				continue
			case !closedLabels[label]:
				continue
			}
			values := []string{value}
			if op == "=~" || op == "!~" {
				if !simpleRegexp.MatchString(value) {
					continue
				}
				values = strings.Split(value, "|")
			}
			for _, v := range values {
				if !m.values[v] {
					problems = append(problems, fmt.Sprintf("%s{%s}: %q is not a documented value of %s", m.name, label, v, label))
				}
			}
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !labelsHere[l] {
				problems = append(problems, fmt.Sprintf("groups by %q, which no metric of the expression has", l))
			}
		}
	}
	return problems
}
