package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestScaleTiny runs the scale scenario small: two sseedge processes, a
// router and a redis-server of its own, 50 streams an edge, a second of
// Notify. Every notification accepted must arrive once, on its stream.
func TestScaleTiny(t *testing.T) {
	_, fig := runReport(t, "-self", "-scenario", "scale", "-redis", testRedis(t),
		"-scale-edges", "2", "-scale-streams", "50", "-scale-rate", "100", "-scale-duration", "1s",
		"-base-duration", "300ms", "-workers", "8", "-per-addr", "10", "-per-child", "60")
	get := func(figure string) row {
		t.Helper()
		r, ok := fig["scale|"+figure]
		if !ok {
			t.Fatalf("no row scale|%s", figure)
		}
		return r
	}
	sent, delivered := get("sent").Value, get("delivered").Value
	if sent != 100 || delivered != sent {
		t.Errorf("sent %v, delivered %v; want 100 and 100", sent, delivered)
	}
	for _, f := range []string{"lost", "duplicated", "failed", "delivered to another user's stream", "streams closed by an edge"} {
		if v := get(f).Value; v != 0 {
			t.Errorf("%s = %v, want 0", f, v)
		}
	}
	// 100 streams over holders of at most 60: the second edge's streams
	// are split between two holders.
	if v := get("stream holder processes").Value; v != 2 {
		t.Errorf("stream holder processes %v, want 2", v)
	}
	p50, p99 := get("p50"), get("p99")
	if p50.Value <= 0 || p99.Value < p50.Value || p50.Versus == "" {
		t.Errorf("p50 %+v, p99 %+v: want 0 < p50 <= p99, each against the no-op call", p50, p99)
	}
	for _, f := range []string{"edge CPU per process", "edge 1 CPU", "edge 2 CPU", "router CPU", "redis-server CPU"} {
		if v := get(f).Value; v < 0 {
			t.Errorf("%s = %v, want >= 0", f, v)
		}
	}
	if v := get("edge RSS per process").Value; v <= 0 {
		t.Errorf("edge RSS per process %v MiB, want > 0", v)
	}
}

// A holder counts an id once on its own stream, a second arrival as a
// duplicate, an arrival on another stream as misrouted (and not seen), and
// a payload out of range as bad, and a warm-up event (negative id) apart.
func TestTallyAccount(t *testing.T) {
	t.Parallel()
	tl := &tally{edges: 2, streams: 3, total: 12}
	tl.seen = newBitset(tl.total)
	now := time.Now()
	p := func(n int64) payload { return payload{T: now.Add(-time.Millisecond).UnixNano(), N: n} }
	// Id 7 goes to edge 1, stream 0 (7/2 mod 3); id 4 to edge 0, stream 2.
	tl.account(p(7), true, 1, 0, now)
	tl.account(p(7), true, 1, 0, now)
	tl.account(p(4), true, 0, 1, now)
	tl.account(p(12), true, 0, 0, now)
	tl.account(payload{}, false, 0, 0, now)
	tl.account(p(-1), true, 0, 0, now)
	if tl.received != 1 || tl.dup != 1 || tl.misrouted != 1 || tl.bad != 2 || tl.warm != 1 {
		t.Errorf("received %d, duplicated %d, misrouted %d, bad %d, warm %d; want 1, 1, 1, 2, 1", tl.received, tl.dup, tl.misrouted, tl.bad, tl.warm)
	}
	if !tl.seen.has(7) || tl.seen.has(4) {
		t.Errorf("seen 7: %v, seen 4: %v; want true, false", tl.seen.has(7), tl.seen.has(4))
	}
	if e, s := scaleTarget(4, 2, 3); e != 0 || s != 2 {
		t.Errorf("scaleTarget(4, 2, 3) = %d, %d; want 0, 2", e, s)
	}
}

// The verdict fails a run with an id accepted and never seen, or seen by
// two holders, and passes one where every accepted id arrived once.
func TestScaleVerdict(t *testing.T) {
	t.Parallel()
	const total = 20
	accepted := newBitset(total)
	for i := range 10 {
		accepted.set(i)
	}
	holderSeen := func(ids ...int) scaleReply {
		s := newBitset(total)
		for _, i := range ids {
			s.set(i)
		}
		return scaleReply{Received: uint64(len(ids)), Seen: s, Latency: &hist{}}
	}
	for _, tc := range []struct {
		name    string
		replies []scaleReply
		want    string // "" passes
	}{
		{"all once", []scaleReply{holderSeen(0, 2, 4, 6, 8), holderSeen(1, 3, 5, 7, 9)}, ""},
		{"one lost", []scaleReply{holderSeen(0, 2, 4, 6, 8), holderSeen(1, 3, 5, 7)}, "1 lost"},
		{"seen by two holders", []scaleReply{holderSeen(0, 2, 4, 6, 8, 9), holderSeen(1, 3, 5, 7, 9)}, "1 duplicated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := &scaleRun{accepted: accepted, seen: newBitset(total)}
			for _, r := range tc.replies {
				if err := run.merge(r); err != nil {
					t.Fatal(err)
				}
			}
			err := scaleVerdict(run)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("verdict %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("verdict %v, want %q", err, tc.want)
			}
		})
	}
}

// The ids travel between processes as JSON.
func TestBitsetJSON(t *testing.T) {
	t.Parallel()
	s := newBitset(100)
	for _, i := range []int{0, 7, 8, 63, 99} {
		s.set(i)
	}
	b, err := json.Marshal(scaleReply{Seen: s})
	if err != nil {
		t.Fatal(err)
	}
	var back scaleReply
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	var got []int
	back.Seen.each(func(i int) { got = append(got, i) })
	if !bytes.Equal(back.Seen, s) || len(got) != 5 || got[0] != 0 || got[4] != 99 || back.Seen.count() != 5 {
		t.Errorf("round trip: %v, ids %v", back.Seen, got)
	}
}

func TestScaleFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"-self", "-scenario", "scale"}, true},
		{[]string{"-self", "-scale-edges", "0"}, false},
		{[]string{"-self", "-scale-streams", "-1"}, false},
		{[]string{"-self", "-scale-rate", "0"}, false},
		{[]string{"-self", "-scale-rate", "1000000", "-scale-duration", "1h"}, false},
	} {
		if _, err := parseFlags(tc.args, &bytes.Buffer{}); (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q) = %v, want ok %v", tc.args, err, tc.ok)
		}
	}
	c, err := parseFlags([]string{"-self", "-quick", "-scale-edges", "2"}, &bytes.Buffer{})
	if err != nil || c.scale.edges != 2 || c.scale.streams != 500 || c.scale.duration != 5*time.Second {
		t.Errorf("-quick -scale-edges 2: %+v, %v", c.scale, err)
	}
}
