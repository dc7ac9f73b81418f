package main

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"
)

func TestPairedRatios(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		base, subject []float64
		want          spread
	}{
		{"odd", []float64{10, 20, 40}, []float64{5, 4, 40}, spread{Median: 0.5, Min: 0.2, Max: 1, Pairs: 3}},
		// The median of the ratios, not the ratio of the medians (which
		// would be 5/20 = 0.25).
		{"ratio of each pair", []float64{10, 20, 30}, []float64{30, 5, 6}, spread{Median: 0.25, Min: 0.2, Max: 3, Pairs: 3}},
		{"even: the middle two's mean", []float64{1, 1, 1, 1}, []float64{4, 1, 2, 3}, spread{Median: 2.5, Min: 1, Max: 4, Pairs: 4}},
		{"a baseline of zero or NaN is left out", []float64{0, 2, math.NaN(), 4}, []float64{7, 1, 7, 4}, spread{Median: 0.75, Min: 0.5, Max: 1, Pairs: 2}},
		{"a subject of NaN is left out", []float64{1, 1}, []float64{math.NaN(), 3}, spread{Median: 3, Min: 3, Max: 3, Pairs: 1}},
		{"unequal lengths: the pairs both have", []float64{2, 2, 2}, []float64{1}, spread{Median: 0.5, Min: 0.5, Max: 0.5, Pairs: 1}},
		{"none", nil, []float64{1}, spread{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := pairedRatios(tc.base, tc.subject); got != tc.want {
				t.Errorf("pairedRatios(%v, %v) = %+v, want %+v", tc.base, tc.subject, got, tc.want)
			}
		})
	}
}

// inPairs alternates, baseline first, and stops at the first error.
func TestInPairs(t *testing.T) {
	t.Parallel()
	var order []string
	rec := func(name string) func(int) error {
		return func(i int) error {
			order = append(order, name+string(rune('0'+i)))
			return nil
		}
	}
	if err := inPairs(context.Background(), 3, rec("b"), rec("s")); err != nil {
		t.Fatal(err)
	}
	if want := []string{"b0", "s0", "b1", "s1", "b2", "s2"}; !slices.Equal(order, want) {
		t.Errorf("rounds ran %q, want %q", order, want)
	}
	order = nil
	boom := errors.New("boom")
	err := inPairs(context.Background(), 3, rec("b"), func(i int) error {
		if i == 1 {
			return boom
		}
		return rec("s")(i)
	})
	if !errors.Is(err, boom) || !slices.Equal(order, []string{"b0", "s0", "b1"}) {
		t.Errorf("after an error in the second subject round: %v, rounds %q", err, order)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	order = nil
	if err := inPairs(ctx, 3, rec("b"), rec("s")); !errors.Is(err, context.Canceled) || len(order) != 0 {
		t.Errorf("with ctx done: %v, rounds %q", err, order)
	}
}

// The rounds of a run add up: counts summed, latencies merged, the rate
// over the rounds' time together.
func TestAddRound(t *testing.T) {
	t.Parallel()
	var one, two hist
	one.record(time.Millisecond)
	two.record(3 * time.Millisecond)
	var sum loadResult
	sum.addRound(loadResult{Sent: 100, Failed: 1, Elapsed: time.Second, Rate: 100, Latency: one})
	sum.addRound(loadResult{Sent: 600, Abandoned: 2, FirstErr: "x", Elapsed: 3 * time.Second, Rate: 200, Latency: two})
	if sum.Sent != 700 || sum.Failed != 1 || sum.Abandoned != 2 || sum.FirstErr != "x" || sum.Elapsed != 4*time.Second ||
		sum.Latency.N != 2 || diff(sum.Rate, 175) > 1e-9 {
		t.Errorf("two rounds added: %+v; want 700 sent, 1 failed, 2 abandoned, 4s, 2 latencies, 175/s", sum)
	}
}

// Each percentile's ratio is taken within a pair of rounds.
func TestLatencyRatios(t *testing.T) {
	t.Parallel()
	round := func(d time.Duration) *hist {
		var h hist
		for range 10 {
			h.record(d)
		}
		return &h
	}
	base := []*hist{round(time.Millisecond), round(4 * time.Millisecond), {}}
	subject := []*hist{round(2 * time.Millisecond), round(4 * time.Millisecond), round(time.Millisecond)}
	rs := latencyRatios(base, subject)
	if len(rs) != len(quantiles) {
		t.Fatalf("%d spreads for %d quantiles", len(rs), len(quantiles))
	}
	for k, s := range rs {
		// The third pair has no baseline: two pairs, ratios 2 and 1
		// (exact: every value of a round is the same).
		if s.Pairs != 2 || diff(s.Min, 1) > 1e-9 || diff(s.Max, 2) > 1e-9 || diff(s.Median, 1.5) > 1e-9 {
			t.Errorf("%s: %+v; want 2 pairs, 1–2, median 1.5", quantiles[k].name, s)
		}
	}
}

// A row measured in pairs prints and reads its spread; the goals table
// shows it beside the median.
func TestPairedRow(t *testing.T) {
	t.Parallel()
	r := &report{}
	r.addPaired("router", "Notify a second, against the no-op call", 8000, "/s",
		pairedRatios([]float64{20000, 10000, 16000}, []float64{8000, 7000, 8000}), "no-op gRPC")
	r.addPaired("router", "no pairs", 1, "/s", spread{}, "no-op gRPC")
	rw := r.Rows[0]
	if rw.Pairs != 3 || rw.Ratio != 0.5 || rw.RatioMin != 0.4 || rw.RatioMax != 0.7 || rw.Versus != "no-op gRPC" {
		t.Errorf("paired row %+v", rw)
	}
	if r.Rows[1].Versus != "" || r.Rows[1].Pairs != 0 {
		t.Errorf("a row with no pair has a ratio: %+v", r.Rows[1])
	}
	g := goalsByName(t, r)["2 Notify rate"]
	if g.Status != goalMet || g.Value != 0.5 || g.Pairs != 3 || g.RatioMin != 0.4 || g.RatioMax != 0.7 {
		t.Errorf("goal 2 from paired rounds: %+v", g)
	}
	if want := "Notify ÷ no-op gRPC = 0.5 (median of 3 pairs, 0.4–0.7), goal ≥ 0.5"; g.Figure != want {
		t.Errorf("goal 2's figure %q, want %q", g.Figure, want)
	}
}
