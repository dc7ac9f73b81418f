package sseedge_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// An idle HTTP/2 stream's goroutine, waiting in hold, has its stack shrunk
// by the garbage collector from 8 KiB to 4 KiB. The collector halves a
// parked goroutine's stack only while less than a quarter of it is in use,
// counting 800 bytes of guard: the frames the goroutine waits in (net/http's,
// handleEvents', hold's) must stay under 1,248 bytes. A frame or a live
// variable added on that path doubles every idle HTTP/2 stream's stack,
// which only the idle benchmark showed before (docs/benchmarks.md, "Idle
// HTTP/2 memory"): this test fails then, with about 8 KiB a stream. The
// frames come to 1,184 bytes: a 48-byte array kept live across hold in
// handleEvents (its frame 64 bytes larger) fails it, as endHeld's work back
// in handleEvents does.
//
// It measures all the goroutine stacks of a process, before and after the
// streams open, so it runs in a process of its own (measureHeldStacks),
// where no other test's goroutines come and go, and no goroutine another
// test ended leaves a stack for the streams' goroutines to take. The race
// detector's instrumentation makes frames larger, and the runtime's stack
// guard twice as large, so that no stack shrinks to 4 KiB in a race build:
// there it skips, saying so, and `make unit` (which CI runs) runs it again
// in a plain build.
func TestH2HeldStreamStackShrinks(t *testing.T) {
	if os.Getenv(heldStackChild) != "" {
		if instrumented() {
			t.Fatal("the plain build go test made is instrumented too")
		}
		measureHeldStacks(t)
		return
	}
	if instrumented() {
		t.Skip("stacks do not shrink to 4 KiB in an instrumented (race) build; make unit runs this test in a plain build")
	}
	t.Parallel()
	run := "^" + t.Name() + "$"
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run="+run, "-test.count=1", "-test.v", "-test.timeout=4m")
	env := os.Environ()
	cmd.Env = append(env, heldStackChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if _, figures, ok := strings.Cut(line, "goroutine stacks:"); ok {
			t.Log("in a process of its own, goroutine stacks:" + figures)
		}
	}
}

// heldStackChild is set in the environment of the process that
// TestH2HeldStreamStackShrinks measures in.
const heldStackChild = "HERALD_HELD_STACK_CHILD"

// instrumented says whether this test binary was built with the race
// detector, a sanitizer or compiler flags, whose frames are not those of
// the edge as it is shipped.
func instrumented() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return true
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "-race", "-msan", "-asan":
			if s.Value == "true" {
				return true
			}
		case "-gcflags":
			if s.Value != "" {
				return true
			}
		}
	}
	return false
}

// measureHeldStacks opens 1,000 idle HTTP/2 streams, and fails t unless
// the goroutine stacks grew by about 4 KiB a stream. The client has no
// goroutine of a stream (net/http's client has one a request): its ten
// connections each have one, started before the first measure.
func measureHeldStacks(t *testing.T) {
	// What the runtime keeps for each P, free stacks and the goroutines
	// that ended with theirs (net/http's HTTP/2 server writes in short-lived
	// goroutines), is a few hundred KiB of stacks that may or may not be
	// counted: with two Ps, on any machine, it is a few hundred bytes a
	// stream.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	e := newTestEdge(t, sseedge.Config{Heartbeat: time.Hour, MaxConnsPerIP: 2000})
	const conns, perConn = 10, 100
	const n = conns * perConn
	clients := make([]*h2Streams, conns)
	for i := range clients {
		clients[i] = dialH2Streams(t, e.srv.Addr)
	}
	testenv.WaitFor(t, time.Minute, "the edge's settings on every connection", func() bool {
		for _, c := range clients {
			if !c.settled.Load() {
				return false
			}
		}
		return true
	})
	before, usedBefore := stacks()
	for i, c := range clients {
		for j := range perConn {
			c.open(t, "/v1/events?access_token="+tokenFor(t, fmt.Sprintf("stack-%d-%d", i, j), time.Hour))
		}
	}
	var written, failed int64
	testenv.WaitFor(t, time.Minute, fmt.Sprintf("%d streams answered and written to", n), func() bool {
		written, failed = 0, 0
		for _, c := range clients {
			written += c.written.Load()
			failed += c.failed.Load()
		}
		return written == n || failed > 0
	})
	if failed > 0 {
		t.Fatalf("%d of %d streams refused or reset", failed, n)
	}
	testenv.WaitFor(t, time.Minute, fmt.Sprintf("%d goroutines waiting in sseedge.(*Server).hold", n), func() bool {
		return goroutinesIn("[chan receive", "/sseedge.(*Server).hold(") == n
	})
	after, usedAfter := stacks()
	perStream := (float64(after) - float64(before)) / n
	used := (float64(usedAfter) - float64(usedBefore)) / n
	t.Logf("goroutine stacks: %d bytes before, %d with %d idle HTTP/2 streams: %.0f bytes a stream, %.0f of them in use",
		before, after, n, perStream, used)
	// 4 KiB a stream when the stacks shrink, 8 KiB when they do not.
	if perStream > 6<<10 {
		t.Errorf("goroutine stacks grew %.0f bytes a held HTTP/2 stream, want about 4 KiB (at most 6 KiB): "+
			"its stack no longer shrinks; the frames it waits in come to %.0f bytes, and must stay under 1,248",
			perStream, used)
	}
}

// stacks is the bytes of goroutine stacks, and the bytes of them in use,
// after enough collections to shrink every parked goroutine's stack as far
// as it goes: a collection halves a stack at most once.
func stacks() (total, used uint64) {
	for range 8 {
		runtime.GC()
	}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}, {Name: "/gc/scan/stack:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64(), sample[1].Value.Uint64()
}

// goroutinesIn counts the goroutines in state (any, if "") whose stack has
// frame.
func goroutinesIn(state, frame string) int {
	buf := make([]byte, 1<<20)
	for {
		if n := runtime.Stack(buf, true); n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, state) && strings.Contains(g, frame) {
			count++
		}
	}
	return count
}

// h2Streams is a client's HTTP/2 connection without TLS (with prior
// knowledge), on which it opens GET streams and reads what comes, with one
// goroutine for the connection and none for a stream.
type h2Streams struct {
	conn     net.Conn
	addr     string
	mu       sync.Mutex // guards the framer's writes, enc, hbuf and next
	fr       *http2.Framer
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
	next     uint32
	readDone chan struct{}
	// settled is set once the server's settings came; written counts the
	// streams answered 200 with some data, failed those refused or reset.
	settled         atomic.Bool
	written, failed atomic.Int64
}

// dialH2Streams connects to addr, closing the connection at cleanup.
func dialH2Streams(tb testing.TB, addr string) *h2Streams {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	c := &h2Streams{conn: conn, addr: addr, fr: http2.NewFramer(conn, conn), next: 1, readDone: make(chan struct{})}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	tb.Cleanup(func() {
		conn.Close()
		<-c.readDone
	})
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		tb.Fatal(err)
	}
	if err := c.write(func() error { return c.fr.WriteSettings() }); err != nil {
		tb.Fatal(err)
	}
	go c.read()
	return c
}

func (c *h2Streams) write(f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f()
}

// open sends a GET for path on a new stream.
func (c *h2Streams) open(tb testing.TB, path string) {
	tb.Helper()
	err := c.write(func() error {
		c.hbuf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", c.addr}, {":path", path}} {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := c.next
		c.next += 2
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// read reads the connection's frames until it closes: it acknowledges the
// server's settings and pings, gives back the flow-control window that data
// takes, and counts the streams written to and those refused or reset.
func (c *h2Streams) read() {
	defer close(c.readDone)
	answered := make(map[uint32]bool)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.write(func() error { return c.fr.WriteSettingsAck() })
				c.settled.Store(true)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.write(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			if f.PseudoValue("status") == "200" {
				answered[f.StreamID] = true
			} else {
				c.failed.Add(1)
			}
		case *http2.DataFrame:
			if n := uint32(len(f.Data())); n > 0 {
				_ = c.write(func() error {
					if err := c.fr.WriteWindowUpdate(0, n); err != nil {
						return err
					}
					return c.fr.WriteWindowUpdate(f.StreamID, n)
				})
			}
			if answered[f.StreamID] {
				delete(answered, f.StreamID)
				c.written.Add(1)
			}
		case *http2.RSTStreamFrame:
			c.failed.Add(1)
		case *http2.GoAwayFrame:
			c.failed.Add(1)
		}
	}
}
