package router

import (
	"container/list"
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/peer"
)

// limitListener holds at most max connections at once, and at most perIP
// of them from one client address (an IPv6 address counts as its /64, as
// the SSE edge counts them): a connection from an address that holds its
// share is closed as soon as it is accepted, before gRPC reads a byte of
// it, and counted in refusedPerIP. So one address, which needs no
// credentials to connect, cannot take the slots of every caller.
//
// Nor can a few addresses together: at max, a new connection makes way by
// closing the oldest open connection that has never carried an
// authenticated call (markAuthenticated), counted in evicted, so that
// connections without credentials, silent or not, only ever take slots
// that callers do not use. Only when every open connection has carried an
// authenticated call is the new one closed as soon as it is accepted,
// counted in refusedTotal: the router is full of its callers, and a client
// told so at once can try another router, where one kept in the listen
// queue would wait behind whatever else is queued there.
//
// Each connection gives its slots back once: when closed, or when evicted.
type limitListener struct {
	net.Listener
	max   int
	perIP int // < 0: no bound per address

	refusedPerIP, refusedTotal, evicted prometheus.Counter

	mu    sync.Mutex
	open  int                  // connections holding a slot
	conns map[netip.Prefix]int // open connections by client address
	// fresh are the open connections that have never carried an
	// authenticated call, oldest first: the ones a new connection evicts.
	fresh list.List
}

func newLimitListener(l net.Listener, max, perIP int, refusedPerIP, refusedTotal, evicted prometheus.Counter) *limitListener {
	return &limitListener{Listener: l, max: max, perIP: perIP,
		refusedPerIP: refusedPerIP, refusedTotal: refusedTotal, evicted: evicted,
		conns: make(map[netip.Prefix]int)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit gives c its slots, or closes it, counted, and returns nil.
func (l *limitListener) admit(c net.Conn) *limitConn {
	client, counted := clientPrefix(c.RemoteAddr())
	lc, victim, refused := l.take(c, client, counted && l.perIP >= 0)
	if victim != nil {
		_ = victim.Conn.Close() // its slots are given back already
		l.evicted.Inc()
	}
	if refused != nil {
		_ = c.Close()
		refused.Inc()
	}
	return lc
}

// take gives c its slots, taking the slot of the oldest connection never
// authenticated (victim) when the listener holds max; or it returns the
// counter of the limit that refuses c.
func (l *limitListener) take(c net.Conn, client netip.Prefix, counted bool) (lc, victim *limitConn, refused prometheus.Counter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if counted && l.conns[client] >= l.perIP {
		return nil, nil, l.refusedPerIP
	}
	if l.open >= l.max {
		e := l.fresh.Front()
		if e == nil {
			return nil, nil, l.refusedTotal
		}
		victim = e.Value.(*limitConn)
		l.releaseLocked(victim)
	}
	lc = &limitConn{Conn: c, l: l, client: client, counted: counted, held: true}
	lc.remote = &connAddr{Addr: c.RemoteAddr(), conn: lc}
	lc.elem = l.fresh.PushBack(lc)
	l.open++
	if counted {
		l.conns[client]++
	}
	return lc, victim, nil
}

func (l *limitListener) release(c *limitConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releaseLocked(c)
}

// releaseLocked gives c's slots back, unless it has already.
func (l *limitListener) releaseLocked(c *limitConn) {
	if !c.held {
		return
	}
	c.held = false
	l.open--
	if c.elem != nil {
		l.fresh.Remove(c.elem)
		c.elem = nil
	}
	if c.counted {
		if l.conns[c.client]--; l.conns[c.client] <= 0 {
			delete(l.conns, c.client)
		}
	}
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

// limitConn is a connection of a limitListener, which it gives its slots
// back to when closed.
type limitConn struct {
	net.Conn
	l       *limitListener
	remote  *connAddr
	client  netip.Prefix
	counted bool // counts against client's share

	authenticated atomic.Bool

	// Under l.mu:
	held bool          // holds its slots
	elem *list.Element // its place in l.fresh; nil once authenticated or released
}

// RemoteAddr is the peer's address, as a *connAddr.
func (c *limitConn) RemoteAddr() net.Addr { return c.remote }

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.l.release(c)
	return err
}

// markAuthenticated takes c out of the connections a new one may evict.
func (c *limitConn) markAuthenticated() {
	if c.authenticated.Load() || !c.authenticated.CompareAndSwap(false, true) {
		return
	}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.elem != nil {
		c.l.fresh.Remove(c.elem)
		c.elem = nil
	}
}

// connAddr is a limitConn's remote address. gRPC gives it to every call of
// the connection as its peer's address (peer.Peer.Addr, through a TLS
// connection too), by which the call finds its connection. It prints as
// the address it wraps.
type connAddr struct {
	net.Addr
	conn *limitConn
}

// markAuthenticated marks the connection that the call of ctx came on as
// one that has carried an authenticated call: a new connection no longer
// evicts it (limitListener). A call that came on another listener's
// connection is left alone.
func markAuthenticated(ctx context.Context) {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(*connAddr); ok {
			a.conn.markAuthenticated()
		}
	}
}
