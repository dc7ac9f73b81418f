package router

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/herald-push/herald/integration/testenv"
)

// TestClientPrefix: an IPv4 address counts alone, an IPv6 address as its
// /64 (so two addresses of one /64 are one client), an IPv4-mapped IPv6
// address as its IPv4 address, and a peer without an IP address not at all.
func TestClientPrefix(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string // "" for not counted
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa::1"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9"), Port: 1, Zone: "eth0"}, "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "/tmp/router.sock", Net: "unix"}, ""},
	} {
		p, ok := clientPrefix(tc.addr)
		if got := map[bool]string{true: p.String(), false: ""}[ok]; got != tc.want {
			t.Errorf("clientPrefix(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// TestLimitListenerReleasesOnce: closing a connection twice gives its
// address's slot back once, and an address over its share is refused and
// counted without taking a slot of the total.
func TestLimitListenerReleasesOnce(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"})
	l := newLimitListener(inner, 4, 2, refused, prometheus.NewCounter(prometheus.CounterOpts{Name: "full"}),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "evicted"}))
	defer l.Close()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accept := func() net.Conn {
		t.Helper()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	client := netip.MustParsePrefix("127.0.0.1/32")
	count := func() (int, int) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.conns[client], l.open
	}

	dial()
	a := accept()
	dial()
	b := accept()
	_ = a.Close()
	_ = a.Close()
	if n, slots := count(); n != 1 || slots != 1 {
		t.Fatalf("after closing one of two connections twice: %d counted for the address, %d slots taken; want 1 and 1", n, slots)
	}
	dial()
	c := accept()
	// The address holds 2: its next connection is refused and counted, and
	// Accept waits for the one after, let in once another has closed.
	dial()
	accepted := acceptLater(t, l)
	for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(refused) < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the connection over the address's share was not refused within 10s")
		}
	}
	_ = b.Close()
	dial()
	d := <-accepted
	if got := testutil.ToFloat64(refused); got != 1 {
		t.Errorf("refused = %v, want 1", got)
	}
	_ = c.Close()
	_ = d.Close()
	if n, slots := count(); n != 0 || slots != 0 {
		t.Fatalf("after closing every connection: %d counted for the address, %d slots taken; want 0", n, slots)
	}
}

// newTestLimitListener is a limitListener on a random loopback port, with
// its counters.
func newTestLimitListener(t *testing.T, max, perIP int) (l *limitListener, refusedPerIP, refusedTotal, evicted prometheus.Counter) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedPerIP = prometheus.NewCounter(prometheus.CounterOpts{Name: "per_ip"})
	refusedTotal = prometheus.NewCounter(prometheus.CounterOpts{Name: "total"})
	evicted = prometheus.NewCounter(prometheus.CounterOpts{Name: "evicted"})
	l = newLimitListener(inner, max, perIP, refusedPerIP, refusedTotal, evicted)
	t.Cleanup(func() { l.Close() })
	return l, refusedPerIP, refusedTotal, evicted
}

// held is what l counts: its connections holding a slot, those never
// authenticated, and the addresses counted.
func (l *limitListener) held() (open, fresh, addrs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.fresh.Len(), len(l.conns)
}

// TestLimitListenerEvictsOldestFresh: at max, a new connection closes the
// oldest one never authenticated and takes its slot; when every one is
// authenticated, the new one is refused and counted, and Accept takes the
// next. An evicted connection closed later, twice, gives nothing back
// again.
func TestLimitListenerEvictsOldestFresh(t *testing.T) {
	l, _, refusedTotal, evicted := newTestLimitListener(t, 3, -1)
	addr := l.Addr().String()
	// connect dials, and accepts the connection: its two ends.
	connect := func() (client net.Conn, server *limitConn) {
		t.Helper()
		client, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return client, c.(*limitConn)
	}
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard
		_, err := c.Read(make([]byte, 1))
		return !errors.Is(err, os.ErrDeadlineExceeded)
	}

	aClient, a := connect()
	_, b := connect()
	cClient, c := connect()
	b.markAuthenticated()
	b.markAuthenticated()
	_, d := connect()
	if !closed(aClient) {
		t.Fatal("the oldest connection never authenticated is open after a fourth connected, want it evicted")
	}
	_, e := connect()
	if !closed(cClient) {
		t.Fatal("the second connection never authenticated is open after a fifth connected, want it evicted")
	}
	if n := testutil.ToFloat64(evicted); n != 2 {
		t.Errorf("evicted = %v, want 2", n)
	}
	d.markAuthenticated()
	e.markAuthenticated()
	if open, fresh, _ := l.held(); open != 3 || fresh != 0 {
		t.Fatalf("held %d connections, %d never authenticated; want 3 and 0", open, fresh)
	}

	// Full of authenticated connections: the next is refused, the one
	// after waits for a slot, given back by b.
	dial := func() {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	dial()
	accepted := acceptLater(t, l)
	testenv.WaitFor(t, 10*time.Second, "the connection over the total to be refused", func() bool { return testutil.ToFloat64(refusedTotal) == 1 })
	_ = b.Close()
	dial()
	f := <-accepted
	_ = a.Close()
	_ = a.Close()
	_ = c.Close()
	if open, fresh, _ := l.held(); open != 3 || fresh != 1 {
		t.Fatalf("after closing evicted connections: held %d connections, %d never authenticated; want 3 and 1", open, fresh)
	}
	for _, c := range []net.Conn{d, e, f} {
		_ = c.Close()
	}
	if open, fresh, _ := l.held(); open != 0 || fresh != 0 {
		t.Fatalf("after closing every connection: held %d, %d never authenticated; want 0", open, fresh)
	}
	if n := testutil.ToFloat64(evicted); n != 2 {
		t.Errorf("evicted = %v, want 2", n)
	}
}

// TestLimitListenerConcurrent: connections accepted, evicted, marked
// authenticated and closed (some twice) at once, from several addresses,
// never hold more than the listener's bounds, and give every slot back:
// run it with -race.
func TestLimitListenerConcurrent(t *testing.T) {
	const max, perIP, addrs, dials = 8, 3, 4, 200
	l, refusedPerIP, refusedTotal, _ := newTestLimitListener(t, max, perIP)
	var (
		mu       sync.Mutex
		conns    []net.Conn
		accepted int
		wg       sync.WaitGroup
		over     atomic.Bool
	)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if open, _, _ := l.held(); open > max {
				over.Store(true)
			}
			mu.Lock()
			conns = append(conns, c)
			accepted++
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					c.(*limitConn).markAuthenticated()
				}
				if i%3 == 0 {
					_ = c.Close()
					_ = c.Close()
				}
			}()
		}
	}()
	var dialers sync.WaitGroup
	for i := range addrs {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}}
			for range dials / addrs {
				c, err := d.Dial("tcp", l.Addr().String())
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
			}
		}()
	}
	dialers.Wait()
	testenv.WaitFor(t, 30*time.Second, "every connection to be accepted or refused", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return accepted+int(testutil.ToFloat64(refusedPerIP)+testutil.ToFloat64(refusedTotal)) == dials
	})
	_ = l.Close()
	<-acceptDone
	wg.Wait()
	if over.Load() {
		t.Errorf("held more than %d connections at once", max)
	}
	if open, fresh, clients := l.held(); open > max || fresh > open || clients > addrs {
		t.Errorf("held %d connections, %d never authenticated, from %d addresses: over the bounds", open, fresh, clients)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	if open, fresh, clients := l.held(); open != 0 || fresh != 0 || clients != 0 {
		t.Errorf("after closing every connection: held %d, %d never authenticated, from %d addresses; want 0", open, fresh, clients)
	}
}

// acceptLater calls l.Accept on a goroutine of its own and hands over what
// it accepts.
func acceptLater(t *testing.T, l net.Listener) <-chan net.Conn {
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	return accepted
}
