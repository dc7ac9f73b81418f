package sseedge_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// A closed HTTP/2 connection's state is freed when the connection closes,
// not when its idle timeout (2 minutes) would have fired. The clients here
// drop their connections with a stream open, as a browser does when it
// goes away: net/http's own idle timer, started again as such a
// connection's streams are closed with it, held every one of them for the
// timeout.
func TestH2ClosedConnsFreedAtOnce(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	var accepted trackedConns
	e := newTestEdgeWrapped(t, rdb, prefix, sseedge.Config{Heartbeat: time.Hour}, accepted.wrap)
	const n = 20
	dropH2Conns(t, e, n)
	if got := accepted.count(); got != n {
		t.Fatalf("%d connections accepted, want %d", got, n)
	}
	// A write's deadline timer may hold its connection until the deadline
	// (WriteTimeout, 10 s) would have passed: the wait is well over that,
	// and well under the idle timeout.
	testenv.WaitFor(t, time.Minute, "closed connections unreachable", func() bool {
		runtime.GC()
		return accepted.alive() == 0
	})
}

// BenchmarkH2ClosedConnHeap reports the heap still in use for each HTTP/2
// connection a client dropped with a stream open, 1 s and 12 s after the
// edge counted its stream closed (heap-B/conn@1s, @12s), for
// docs/benchmarks.md; 12 s is past the write deadline (WriteTimeout, 10 s)
// whose stopped timer may hold a connection until then. A first round, not
// measured, grows what only grows once: the runtime keeps a descriptor for
// each goroutine that has ever run, for the next ones, and maps keep their
// size.
func BenchmarkH2ClosedConnHeap(b *testing.B) {
	rdb, prefix := testenv.Redis(b)
	e := newTestEdgeOn(b, rdb, prefix, sseedge.Config{Heartbeat: time.Hour})
	const n = 1000
	dropH2Conns(b, e, n)
	time.Sleep(12 * time.Second)
	for b.Loop() {
		before := int64(liveHeap())
		dropH2Conns(b, e, n)
		time.Sleep(time.Second)
		b.ReportMetric(float64(int64(liveHeap())-before)/n, "heap-B/conn@1s")
		time.Sleep(11 * time.Second)
		b.ReportMetric(float64(int64(liveHeap())-before)/n, "heap-B/conn@12s")
	}
}

// liveHeap is the heap's live bytes after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// dropH2Conns opens n HTTP/2 connections to e with one stream each, then
// closes them from the client side with the streams open, and waits for the
// edge to count the n more streams closed by their clients.
func dropH2Conns(tb testing.TB, e *testEdge, n int) {
	tb.Helper()
	closedBefore := e.closed(sseedge.CloseClientClosed)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	var dialed []net.Conn
	for i := range n {
		var d net.Dialer
		// A transport of its own, so that each stream has its own
		// connection.
		transport := &http.Transport{Protocols: protocols,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err == nil {
					dialed = append(dialed, c)
				}
				return c, err
			}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(tb, fmt.Sprintf("gone-%d", i), time.Hour), nil)
		resp, err := transport.RoundTrip(req)
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
			tb.Fatalf("served %s %d", resp.Proto, resp.StatusCode)
		}
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			tb.Fatal(err)
		}
	}
	if len(dialed) != n {
		tb.Fatalf("%d connections for %d streams", len(dialed), n)
	}
	for _, c := range dialed {
		c.Close()
	}
	testenv.WaitFor(tb, time.Minute, "the dropped streams closed", func() bool {
		return e.closed(sseedge.CloseClientClosed) == closedBefore+float64(n)
	})
}

// trackedConns wraps a listener so that a test can see whether the
// connections it accepted are still reachable.
type trackedConns struct {
	mu    sync.Mutex
	conns []weak.Pointer[trackedConn]
}

type trackedConn struct{ net.Conn }

type trackingListener struct {
	net.Listener
	tracked *trackedConns
}

func (tc *trackedConns) wrap(lis net.Listener) net.Listener {
	return trackingListener{lis, tc}
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := &trackedConn{c}
	l.tracked.mu.Lock()
	l.tracked.conns = append(l.tracked.conns, weak.Make(w))
	l.tracked.mu.Unlock()
	return w, nil
}

func (tc *trackedConns) count() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return len(tc.conns)
}

// alive counts the accepted connections still reachable.
func (tc *trackedConns) alive() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	n := 0
	for _, p := range tc.conns {
		if p.Value() != nil {
			n++
		}
	}
	return n
}
