package router

import (
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// limitListener accepts at most max connections at once, Accept waiting for
// one of them to close, and at most perIP of them from one client address
// (an IPv6 address counts as its /64, as the SSE edge counts them): a
// connection from an address that holds its share is closed as soon as it
// is accepted, before gRPC reads a byte of it, and counted in refused. So
// one address, which needs no credentials to connect, cannot take the
// slots of every caller. Each connection gives its slots back once, when
// closed.
type limitListener struct {
	net.Listener
	slots   chan struct{}
	perIP   int // < 0: no bound per address
	refused prometheus.Counter

	mu    sync.Mutex
	conns map[netip.Prefix]int // open connections by client address

	done chan struct{}
	once sync.Once
}

func newLimitListener(l net.Listener, max, perIP int, refused prometheus.Counter) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, max), perIP: perIP, refused: refused,
		conns: make(map[netip.Prefix]int), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		client, counted := clientPrefix(c.RemoteAddr())
		if counted = counted && l.perIP >= 0; counted && !l.acquire(client) {
			_ = c.Close()
			l.refused.Inc()
			continue // the slot waits for the next connection
		}
		return &limitConn{Conn: c, release: func() {
			if counted {
				l.releaseIP(client)
			}
			<-l.slots
		}}, nil
	}
}

// acquire counts one more connection from client, unless it holds perIP.
func (l *limitListener) acquire(client netip.Prefix) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[client] >= l.perIP {
		return false
	}
	l.conns[client]++
	return true
}

func (l *limitListener) releaseIP(client netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[client]--; l.conns[client] <= 0 {
		delete(l.conns, client)
	}
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// clientPrefix is the address a connection counts against: its peer's IPv4
// address, or its IPv6 address's /64, what one host usually gets, so that
// walking through one's own /64 does not help. It reports false for a peer
// without an IP address (a Unix socket).
func clientPrefix(addr net.Addr) (netip.Prefix, bool) {
	var ip netip.Addr
	if tcp, ok := addr.(*net.TCPAddr); ok {
		ip = tcp.AddrPort().Addr()
	} else if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		ip = ap.Addr()
	}
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// limitConn gives its listener's slots back when closed, once.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
