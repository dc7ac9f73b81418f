package router

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	l := newLimitListener(inner, 4, 2, refused)
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
	count := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.conns[client]
	}

	dial()
	a := accept()
	dial()
	b := accept()
	_ = a.Close()
	_ = a.Close()
	if n, slots := count(), len(l.slots); n != 1 || slots != 1 {
		t.Fatalf("after closing one of two connections twice: %d counted for the address, %d slots taken; want 1 and 1", n, slots)
	}
	dial()
	c := accept()
	// The address holds 2: its next connection is refused and counted, and
	// Accept waits for the one after, let in once another has closed.
	dial()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
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
	if n, slots := count(), len(l.slots); n != 0 || slots != 0 {
		t.Fatalf("after closing every connection: %d counted for the address, %d slots taken; want 0", n, slots)
	}
}
