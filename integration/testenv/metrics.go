package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Counter returns the counter name gathered from g, summed over its labels;
// zero when g has no such series.
func Counter(tb testing.TB, g prometheus.Gatherer, name string) float64 {
	tb.Helper()
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
