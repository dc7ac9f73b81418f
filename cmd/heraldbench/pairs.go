package main

import (
	"context"
	"math"
	"slices"
	"time"
)

// Paired rounds. On a shared machine a figure and its baseline measured a
// few minutes apart each see a different machine, and their ratio swings
// with whatever else ran. So a ratio a goal reads is measured in -pairs
// pairs of short rounds, the baseline's round and then the subject's, one
// pair after another: each ratio of a pair is taken over the same few
// seconds, and the ratio reported is their median, with the least and the
// greatest as its spread.

// spread is the ratios of a figure to its baseline, one per pair of rounds.
type spread struct {
	Median, Min, Max float64
	Pairs            int // pairs whose ratio counts: those with a baseline above zero
}

// pairedRatios is the spread of subject[i] / base[i]. A pair whose
// baseline is zero, negative or NaN, or that the other slice lacks, is
// left out; with none left, Pairs is 0.
func pairedRatios(base, subject []float64) spread {
	var r []float64
	for i := range min(len(base), len(subject)) {
		if base[i] > 0 && !math.IsNaN(subject[i]) {
			r = append(r, subject[i]/base[i])
		}
	}
	if len(r) == 0 {
		return spread{}
	}
	slices.Sort(r)
	s := spread{Min: r[0], Max: r[len(r)-1], Pairs: len(r), Median: r[len(r)/2]}
	if len(r)%2 == 0 {
		s.Median = (r[len(r)/2-1] + r[len(r)/2]) / 2
	}
	return s
}

// inPairs runs base then subject, pairs times, round by round, and stops
// at the first error or when ctx is done.
func inPairs(ctx context.Context, pairs int, base, subject func(round int) error) error {
	for i := range max(pairs, 1) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := base(i); err != nil {
			return err
		}
		if err := subject(i); err != nil {
			return err
		}
	}
	return nil
}

// roundLength is d split in pairs rounds, to the millisecond, each at
// least 100 ms.
func roundLength(d time.Duration, pairs int) time.Duration {
	return max((d / time.Duration(max(pairs, 1))).Round(time.Millisecond), 100*time.Millisecond)
}

// addRound adds one round's load to a run of rounds: the counts summed, the
// latencies merged, the rate over the rounds' time together.
func (l *loadResult) addRound(r loadResult) {
	elapsed := l.Elapsed + r.Elapsed
	if elapsed > 0 {
		l.Rate = (l.Rate*l.Elapsed.Seconds() + r.Rate*r.Elapsed.Seconds()) / elapsed.Seconds()
	}
	l.Elapsed = elapsed
	l.Sent += r.Sent
	l.Failed += r.Failed
	l.Abandoned += r.Abandoned
	if l.FirstErr == "" {
		l.FirstErr = r.FirstErr
	}
	l.Latency.merge(&r.Latency)
}

// quantiles are the latency percentiles the report prints.
var quantiles = []struct {
	name string
	q    float64
}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p99.9", 0.999}, {"max", 1}}

// Indexes of quantiles.
const q50, q99 = 0, 2

// latencyRatios is, for each of quantiles, the spread of each subject
// round's percentile over its baseline round's.
func latencyRatios(base, subject []*hist) []spread {
	out := make([]spread, len(quantiles))
	for k, q := range quantiles {
		var b, s []float64
		for i := range min(len(base), len(subject)) {
			if base[i] == nil || base[i].N == 0 || subject[i] == nil || subject[i].N == 0 {
				continue
			}
			b, s = append(b, ms(base[i].quantile(q.q))), append(s, ms(subject[i].quantile(q.q)))
		}
		out[k] = pairedRatios(b, s)
	}
	return out
}
