package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one figure of the table.
type row struct {
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	// Ratio is Value divided by the baseline named in Versus; 0 when the
	// figure has no baseline.
	Ratio  float64 `json:"ratio,omitempty"`
	Versus string  `json:"versus,omitempty"`
	// Pairs, when not 0, says the figure and its baseline were measured in
	// that many pairs of alternating rounds (pairs.go): Ratio is the median
	// of the pairs' ratios, RatioMin and RatioMax the least and greatest.
	Pairs    int     `json:"pairs,omitempty"`
	RatioMin float64 `json:"ratio_min,omitempty"`
	RatioMax float64 `json:"ratio_max,omitempty"`
}

// report is the whole run, as -json writes it.
type report struct {
	Date     string            `json:"date"`
	Host     string            `json:"host"`
	CPUs     int               `json:"cpus"`
	Settings map[string]string `json:"settings"`
	Notes    []string          `json:"notes,omitempty"`
	Rows     []row             `json:"rows"`
	// Goals is issue 17's goals read off Rows (goals.go).
	Goals []goalRow `json:"goals,omitempty"`
}

func (r *report) add(scenario, figure string, value float64, unit string) {
	r.Rows = append(r.Rows, row{Scenario: scenario, Figure: figure, Value: value, Unit: unit})
}

// addVs adds a figure with its ratio to a baseline (skipped when the
// baseline is unknown or zero).
func (r *report) addVs(scenario, figure string, value float64, unit string, base float64, versus string) {
	rw := row{Scenario: scenario, Figure: figure, Value: value, Unit: unit}
	if base > 0 && !math.IsNaN(base) {
		rw.Ratio, rw.Versus = value/base, versus
	}
	r.Rows = append(r.Rows, rw)
}

// addPaired adds a figure with its ratio to a baseline measured in
// alternating rounds: the median of the pairs' ratios, with their spread
// (skipped when no pair had a baseline).
func (r *report) addPaired(scenario, figure string, value float64, unit string, s spread, versus string) {
	rw := row{Scenario: scenario, Figure: figure, Value: value, Unit: unit}
	if s.Pairs > 0 {
		rw.Ratio, rw.Versus, rw.Pairs, rw.RatioMin, rw.RatioMax = s.Median, versus, s.Pairs, s.Min, s.Max
	}
	r.Rows = append(r.Rows, rw)
}

func (r *report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// addLatency adds the p50, p90, p99, p99.9 and max of h, each against the
// same percentile of base when base is not nil.
func (r *report) addLatency(scenario, what string, h *hist, base *hist, versus string) {
	for _, q := range quantiles {
		var b float64
		if base != nil && base.N > 0 {
			b = ms(base.quantile(q.q))
		}
		r.addVs(scenario, what+" "+q.name, ms(h.quantile(q.q)), "ms", b, versus)
	}
}

// addLatencyPaired adds the percentiles of h, the subject's rounds merged,
// each with the spread of its ratio to the baseline's rounds (latencyRatios).
func (r *report) addLatencyPaired(scenario, what string, h *hist, ratios []spread, versus string) {
	for k, q := range quantiles {
		r.addPaired(scenario, what+" "+q.name, ms(h.quantile(q.q)), "ms", ratios[k], versus)
	}
}

func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case v == math.Trunc(v) && a < 1e15:
		return thousands(strconv.FormatInt(int64(v), 10))
	case a >= 1000:
		return thousands(strconv.FormatInt(int64(math.Round(v)), 10))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func thousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// print writes the table.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "heraldbench %s on %s (%d CPUs)\n", r.Date, r.Host, r.CPUs)
	t := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t, "scenario\tfigure\tvalue\tunit\tratio\tto baseline")
	for _, rw := range r.Rows {
		ratio, versus := "", rw.Versus
		if rw.Versus != "" {
			ratio = strconv.FormatFloat(rw.Ratio, 'f', 3, 64)
		}
		if rw.Pairs > 0 {
			ratio += " (" + strconv.FormatFloat(rw.RatioMin, 'f', 3, 64) + "–" + strconv.FormatFloat(rw.RatioMax, 'f', 3, 64) + ")"
			versus += fmt.Sprintf(", median of %d pairs (least–greatest)", rw.Pairs)
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", rw.Scenario, rw.Figure, formatValue(rw.Value), rw.Unit, ratio, versus)
	}
	t.Flush()
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
