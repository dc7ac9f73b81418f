package sseedge

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeConn is a connection from addr that records its closing.
type fakeConn struct {
	net.Conn
	addr   *net.TCPAddr
	closed atomic.Bool
}

func newFakeConn(ip string, port int) *fakeConn {
	return &fakeConn{addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: port}}
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.addr }
func (c *fakeConn) Close() error         { c.closed.Store(true); return nil }

func newTestConnLimits(maxTotal, maxPerIP int) *connLimits {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refused"}, []string{"limit"})
	evicted := prometheus.NewCounter(prometheus.CounterOpts{Name: "evicted"})
	return newConnLimits(maxTotal, maxPerIP, func(netip.Addr) bool { return false }, refused, evicted)
}

// checkEmpty fails unless every count and entry of cl is gone.
func checkEmpty(t *testing.T, cl *connLimits) {
	t.Helper()
	if n, addrs := cl.open(); n != 0 || addrs != 0 {
		t.Errorf("%d connections, %d addresses counted after all closed, want 0", n, addrs)
	}
	if len(cl.conns) != 0 || cl.evictable.next != &cl.evictable {
		t.Errorf("%d entries left, ring empty %v", len(cl.conns), cl.evictable.next == &cl.evictable)
	}
}

// At the total, the connection waiting longest with no stream goes, in
// the order of acceptance and of going idle; a connection holding a stream
// stays, and once its stream ends it waits from then. Each place is given
// back once: at the eviction, not again at the evicted one's close.
func TestConnLimitsEvictionOrder(t *testing.T) {
	cl := newTestConnLimits(3, 2)
	a, b, c := newFakeConn("10.0.0.1", 1), newFakeConn("10.0.0.1", 2), newFakeConn("10.0.0.2", 1)
	for _, fc := range []*fakeConn{a, b, c} {
		cl.connState(fc, http.StateNew)
	}
	cl.connState(a, http.StateIdle) // a now waits least: b, c, a
	if !cl.admitStream(b) {
		t.Fatal("a stream on a counted connection refused")
	}
	d := newFakeConn("10.0.0.3", 1)
	cl.connState(d, http.StateNew)
	if !c.closed.Load() || a.closed.Load() || b.closed.Load() || d.closed.Load() {
		t.Fatalf("closed a %v b %v c %v d %v, want c alone", a.closed.Load(), b.closed.Load(), c.closed.Load(), d.closed.Load())
	}
	if cl.admitStream(c) {
		t.Error("a stream admitted on an evicted connection")
	}
	cl.connState(c, http.StateClosed)
	if n, _ := cl.open(); n != 3 {
		t.Errorf("%d counted, want 3", n)
	}
	cl.endStream(b) // b waits from now: a, d, b
	e := newFakeConn("10.0.0.4", 1)
	cl.connState(e, http.StateNew)
	if !a.closed.Load() || b.closed.Load() {
		t.Errorf("closed a %v b %v, want a", a.closed.Load(), b.closed.Load())
	}
	if got := testutil.ToFloat64(cl.evicted); got != 2 {
		t.Errorf("evicted = %v, want 2", got)
	}
	for _, fc := range []*fakeConn{a, b, d, e} {
		cl.connState(fc, http.StateClosed)
	}
	checkEmpty(t, cl)
}

// When every connection holds a stream, a new one is refused; a stream
// taken over keeps its place until released, and its connection's entry
// goes at the taking.
func TestConnLimitsRefusedWhenAllHoldStreams(t *testing.T) {
	cl := newTestConnLimits(2, -1)
	a, b := newFakeConn("10.0.0.1", 1), newFakeConn("10.0.0.2", 1)
	for _, fc := range []*fakeConn{a, b} {
		cl.connState(fc, http.StateNew)
		cl.admitStream(fc)
	}
	place := cl.take(a) // hijacked
	cl.connState(a, http.StateHijacked)
	over := newFakeConn("10.0.0.3", 1)
	cl.connState(over, http.StateNew)
	if !over.closed.Load() || a.closed.Load() || b.closed.Load() {
		t.Fatalf("closed a %v b %v new %v, want the new one", a.closed.Load(), b.closed.Load(), over.closed.Load())
	}
	if got := testutil.ToFloat64(cl.refused.WithLabelValues("total")); got != 1 {
		t.Errorf("refused total = %v, want 1", got)
	}
	cl.connState(over, http.StateClosed)
	cl.endStream(a) // after the taking: nothing
	cl.release(place)
	cl.endStream(b)
	cl.connState(b, http.StateClosed)
	checkEmpty(t, cl)
}

// Connections come and go on many goroutines, as net/http's, holding
// streams, going idle, being taken over, evicting one another: every
// count is given back exactly once, and never more are counted than the
// limits allow.
func TestConnLimitsConcurrent(t *testing.T) {
	cl := newTestConnLimits(8, 3)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 300 {
				c := newFakeConn(fmt.Sprintf("10.0.%d.%d", g%4, i%3), g*1000+i)
				cl.connState(c, http.StateNew)
				cl.connState(c, http.StateActive)
				switch i % 3 {
				case 0: // a stream held on its handler goroutine
					if cl.admitStream(c) {
						cl.endStream(c)
					}
					cl.connState(c, http.StateIdle)
				case 1: // a stream taken over
					if cl.admitStream(c) {
						place := cl.take(c)
						cl.connState(c, http.StateHijacked)
						cl.release(place)
						continue
					}
				case 2:
					cl.connState(c, http.StateIdle)
				}
				if n, _ := cl.open(); n > 8 {
					t.Errorf("%d counted, over the total of 8", n)
				}
				cl.connState(c, http.StateClosed)
			}
		})
	}
	wg.Wait()
	checkEmpty(t, cl)
}
