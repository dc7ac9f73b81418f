package main

import (
	"cmp"
	"math"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// The window math of heraldctl stats, over two scrapes of the same
// endpoints: rates from the counters' increase, the gauges' current values,
// and quantiles from the histograms' bucket increases.

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
