package main

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// hist is a log-bucketed latency histogram in the manner of HdrHistogram:
// values below 128 ns have a bucket each, and every power of two above is
// split into 64 buckets, so a recorded value is known to within 1/64 (1.6%)
// whatever its magnitude. It is mergeable, which lets child processes send
// theirs to the parent as JSON. The zero value is empty; it is not safe for
// concurrent use.
type hist struct {
	Counts map[int]uint64 `json:"counts"` // bucket index -> count (sparse)
	N      uint64         `json:"n"`
	Min    int64          `json:"min_ns"`
	Max    int64          `json:"max_ns"`
	Sum    float64        `json:"sum_ns"`
}

const subBits = 7 // 128 linear buckets, then 64 per power of two

func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - subBits
	top := v >> shift // in [64, 128)
	return 1<<subBits + (shift-1)*(1<<(subBits-1)) + int(top-(1<<(subBits-1)))
}

// bucketHigh is the largest value that falls in bucket i.
func bucketHigh(i int) int64 {
	if i < 1<<subBits {
		return int64(i)
	}
	j := i - 1<<subBits
	shift := j/(1<<(subBits-1)) + 1
	top := int64(j%(1<<(subBits-1)) + 1<<(subBits-1))
	return (top+1)<<shift - 1
}

func (h *hist) record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0 // clocks of two processes on one machine; should not happen
	}
	if h.Counts == nil {
		h.Counts = make(map[int]uint64)
	}
	h.Counts[bucketOf(v)]++
	if h.N == 0 || v < h.Min {
		h.Min = v
	}
	if v > h.Max {
		h.Max = v
	}
	h.N++
	h.Sum += float64(v)
}

func (h *hist) merge(o *hist) {
	if o == nil || o.N == 0 {
		return
	}
	if h.Counts == nil {
		h.Counts = make(map[int]uint64)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	if h.N == 0 || o.Min < h.Min {
		h.Min = o.Min
	}
	if o.Max > h.Max {
		h.Max = o.Max
	}
	h.N += o.N
	h.Sum += o.Sum
}

// quantile returns the value at quantile q (0..1): the upper bound of the
// bucket holding it, never above the largest value recorded, so that
// quantiles are ordered and q=1 is the exact maximum.
func (h *hist) quantile(q float64) time.Duration {
	if h.N == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.N)))
	if rank < 1 {
		rank = 1
	}
	idx := make([]int, 0, len(h.Counts))
	for i := range h.Counts {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var seen uint64
	for _, i := range idx {
		seen += h.Counts[i]
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), h.Max))
		}
	}
	return time.Duration(h.Max)
}
