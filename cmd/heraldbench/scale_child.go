package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/bits"
	"net"
	"strconv"
	"time"

	"github.com/herald-push/herald/sseedge"
)

// The scale scenario's stream holders: child processes that hold streams
// on several edges and account for every event by its notification: which
// ids arrived, which arrived twice, which arrived on another user's stream.
//
// Notification i of a scale run goes to stream (i / edges) mod streams of
// edge i mod edges (scaleTarget): consecutive notifications go to different
// edges, and a holder knows from the id alone which stream must receive it.

// scaleChildFlag, as the first argument, makes heraldbench a scale stream
// holder: it answers scaleCommand lines on standard input with scaleReply
// lines on standard output.
const scaleChildFlag = "-heraldbench-scale-child"

// scaleCommand is what the parent sends a scale holder, one JSON line.
type scaleCommand struct {
	Op string `json:"op"` // open, report, close
	// open: streams First .. First+Count-1 of edge Edge (at URL), user
	// Prefix+"<edge>-<stream>" each, from source addresses Addrs (one per
	// stream; empty lets the kernel choose), Dials at once.
	URL    string   `json:"url,omitempty"`
	Edge   int      `json:"edge,omitempty"`
	Secret []byte   `json:"secret,omitempty"`
	Prefix string   `json:"prefix,omitempty"`
	First  int      `json:"first,omitempty"`
	Count  int      `json:"count,omitempty"`
	Addrs  []string `json:"addrs,omitempty"`
	Dials  int      `json:"dials,omitempty"`
	// The run's shape, the same in every open: Edges edges of Streams
	// streams, notification ids 0 .. Total-1.
	Edges   int `json:"edges,omitempty"`
	Streams int `json:"streams,omitempty"`
	Total   int `json:"total,omitempty"`
	// report: with Full, also the ids seen.
	Full bool `json:"full,omitempty"`
}

// scaleReply is a holder's answer.
type scaleReply struct {
	Op     string `json:"op"`
	Opened int    `json:"opened,omitempty"`
	Failed int    `json:"failed,omitempty"`
	Error  string `json:"error,omitempty"`
	// Received counts the distinct ids received on their own stream;
	// Duplicated an id received again; Misrouted an event on a stream that
	// is not its user's; Bad an event whose data is not a bench payload or
	// whose id is out of range; Closed the streams an edge ended.
	Received   uint64 `json:"received,omitempty"`
	Warm       uint64 `json:"warm,omitempty"` // warm-up events (negative ids), not accounted
	Duplicated uint64 `json:"duplicated,omitempty"`
	Misrouted  uint64 `json:"misrouted,omitempty"`
	Bad        uint64 `json:"bad,omitempty"`
	Closed     int    `json:"closed,omitempty"`
	Latency    *hist  `json:"latency,omitempty"` // receive time minus the payload's t
	Seen       bitset `json:"seen,omitempty"`    // with Full: the ids received
}

// scaleTarget is the edge and the stream on it that notification i goes to.
func scaleTarget(i, edges, streams int) (edge, stream int) {
	return i % edges, (i / edges) % streams
}

func scaleUser(prefix string, edge, stream int) string {
	return prefix + strconv.Itoa(edge) + "-" + strconv.Itoa(stream)
}

// bitset is a set of notification ids; JSON carries it as base64.
type bitset []byte

func newBitset(n int) bitset    { return make(bitset, (n+7)/8) }
func (s bitset) has(i int) bool { return i >= 0 && i>>3 < len(s) && s[i>>3]&(1<<(i&7)) != 0 }
func (s bitset) set(i int)      { s[i>>3] |= 1 << (i & 7) }

// each calls fn with every id in the set, in order.
func (s bitset) each(fn func(i int)) {
	for k, b := range s {
		for ; b != 0; b &= b - 1 {
			fn(k*8 + bits.TrailingZeros8(b))
		}
	}
}

// tally holds a scale holder's streams and counts what they receive. The
// embedded holder keeps the connections and closes them.
type tally struct {
	holder // its mu guards the fields below too; received counts distinct ids
	// edges, streams and total are the run's shape, fixed by the first open.
	edges, streams, total int
	seen                  bitset
	dup, misrouted, warm  uint64
}

// runScaleChild is a scale holder's main loop.
func runScaleChild(in io.Reader, out io.Writer) error {
	t := &tally{}
	defer t.closeAll()
	return serveCommands(in, out, func(c scaleCommand) (scaleReply, bool) {
		var r scaleReply
		switch c.Op {
		case "open":
			r = t.open(c)
		case "report":
			r = t.report(c.Full)
		case "close":
			t.closeAll()
		default:
			r.Error = "unknown op " + c.Op
		}
		r.Op = c.Op
		return r, c.Op == "close"
	})
}

func (t *tally) open(c scaleCommand) scaleReply {
	if c.Edges < 1 || c.Streams < 1 || c.Total < 1 || c.Count < 0 || c.First < 0 || c.First+c.Count > c.Streams {
		return scaleReply{Error: fmt.Sprintf("open: bad shape: edges %d, streams %d, total %d, first %d, count %d",
			c.Edges, c.Streams, c.Total, c.First, c.Count)}
	}
	t.mu.Lock()
	if t.seen == nil {
		t.seen, t.edges, t.streams, t.total = newBitset(c.Total), c.Edges, c.Streams, c.Total
	}
	same := t.edges == c.Edges && t.streams == c.Streams && t.total == c.Total
	t.mu.Unlock()
	if !same {
		return scaleReply{Error: "open: the run's shape changed between opens"}
	}
	dial := command{Edge: c.URL, Secret: c.Secret}
	now := time.Now()
	conns, failed, first := dialAll(c.Count, c.Dials, c.Addrs, func(i int, src string) (net.Conn, error) {
		stream := c.First + i
		conn, body, err := dialSSE(dial, scaleUser(c.Prefix, c.Edge, stream), src, now)
		if err == nil {
			t.wg.Add(1)
			go t.read(body, c.Edge, stream)
		}
		return conn, err
	})
	t.mu.Lock()
	t.conns = append(t.conns, conns...)
	t.mu.Unlock()
	return scaleReply{Opened: len(conns), Failed: failed, Error: first}
}

// read accounts for one stream's events until it ends.
func (t *tally) read(body *bufio.Reader, edge, stream int) {
	defer t.wg.Done()
	dec := sseedge.NewDecoder(body)
	for {
		ev, err := dec.Next()
		if err != nil {
			t.closed.Add(1)
			return
		}
		if ev.Data == "" {
			continue
		}
		at := time.Now()
		var p payload
		ok := json.Unmarshal([]byte(ev.Data), &p) == nil && p.T > 0
		t.mu.Lock()
		t.account(p, ok, edge, stream, at)
		t.mu.Unlock()
	}
}

// account counts one event with payload p, received at at on stream
// stream of edge edge. The caller holds t.mu.
func (t *tally) account(p payload, ok bool, edge, stream int, at time.Time) {
	if ok && p.N < 0 {
		t.warm++ // the warm-up's: -1-i
		return
	}
	if !ok || p.N >= int64(t.total) {
		t.bad++
		return
	}
	i := int(p.N)
	if e, s := scaleTarget(i, t.edges, t.streams); e != edge || s != stream {
		// Not its user's: the id stays unseen, so it also counts as lost
		// unless its own stream gets it too.
		t.misrouted++
		return
	}
	if t.seen.has(i) {
		t.dup++
		return
	}
	t.seen.set(i)
	t.received++
	t.lat.record(at.Sub(time.Unix(0, p.T)))
}

func (t *tally) report(full bool) scaleReply {
	t.mu.Lock()
	defer t.mu.Unlock()
	lat := t.lat
	lat.Counts = maps.Clone(t.lat.Counts)
	r := scaleReply{Received: t.received, Warm: t.warm, Duplicated: t.dup, Misrouted: t.misrouted, Bad: t.bad,
		Closed: int(t.closed.Load()), Latency: &lat}
	if full {
		r.Seen = bitset(append([]byte(nil), t.seen...))
	}
	return r
}

// scaleHolder is the parent's handle on a scale holder process.
type scaleHolder struct {
	ch *child // its pipes; the line protocol is scaleCommand/scaleReply
}

func startScaleHolder(ctx context.Context) (*scaleHolder, error) {
	cmd, in, out, err := reexec(ctx, scaleChildFlag)
	if err != nil {
		return nil, err
	}
	return &scaleHolder{ch: &child{cmd: cmd, in: in, enc: json.NewEncoder(in),
		dec: json.NewDecoder(bufio.NewReader(out)), pid: cmd.Process.Pid}}, nil
}

func (h *scaleHolder) call(c scaleCommand) (scaleReply, error) {
	h.ch.mu.Lock()
	defer h.ch.mu.Unlock()
	if err := h.ch.enc.Encode(c); err != nil {
		return scaleReply{}, fmt.Errorf("scale holder %d: %w", h.ch.pid, err)
	}
	var r scaleReply
	if err := h.ch.dec.Decode(&r); err != nil {
		return scaleReply{}, fmt.Errorf("scale holder %d: %w", h.ch.pid, err)
	}
	if r.Op != c.Op {
		return r, fmt.Errorf("scale holder %d answered %q to %q", h.ch.pid, r.Op, c.Op)
	}
	return r, nil
}

func (h *scaleHolder) stop() error { return h.ch.stop() }
