package sseedge

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// connLimits counts the edge's TCP connections, in total and by peer
// address (IPv6 by /64, as MaxConnsPerIP counts), from the moment each is
// accepted until it closes. A connection over its address's limit
// (MaxTCPConnsPerIP) is closed at once, before anything is read from it.
// One over the total (MaxTCPConns) takes the place of the connection that
// has waited longest holding no stream, which is closed (evicted): one yet
// to send its request, idle between requests, or serving requests that are
// not streams; only when every connection holds a stream is the new one
// closed instead. It follows the connections' states
// (http.Server.ConnState), and the handler tells it of each stream admitted
// (admitStream) and ended (endStream).
//
// A connection holds a stream from the moment its stream's request is
// admitted, before the response begins, until the stream ends or the
// writers take its connection over. HTTP/2 follows the same rule, per
// connection: one with a stream open is kept, one with none (its preface
// only, idle, or serving acks) can be evicted, as an HTTP/1.1 connection
// can; a client whose connection is evicted between requests dials again.
// The longest waiting is the one accepted, or idle after its last request
// or stream, first.
//
// Invariant: a connection counted is counted exactly once until its place
// is given back, exactly once: at its eviction, or by its closed state or,
// for a connection taken over from net/http (hijacked), by whoever took it
// (take, then release when it closes it), since net/http reports no close
// after a hijack. A connection refused is never counted, and one evicted
// no longer is; their closed state, or their taking over, finds no place.
//
// A connection has an entry here from its new state until its closed state
// or its taking over, bounded by the total: nothing is kept for a stream
// the writers took over, so that the counts cost an idle HTTP/1.1 stream
// no memory. A stream served on its handler goroutine (HTTP/2, HTTP/1.0)
// keeps its connection's entry.
type connLimits struct {
	maxTotal, maxPerIP int // maxPerIP <= 0: no per-address limit
	trusted            func(netip.Addr) bool
	refused            *prometheus.CounterVec // by limit: per_ip, total
	evicted            prometheus.Counter

	mu     sync.Mutex
	total  int
	byAddr map[netip.Prefix]*addrConns
	// conns are the connections net/http holds, from their new state: the
	// counted ones, and those refused or evicted and closed whose closed
	// state net/http has yet to report.
	conns map[net.Conn]*heldConn
	// evictable is a ring, through itself, of the counted connections
	// holding no stream, the longest waiting first.
	evictable heldConn
}

// heldConn is a connection net/http holds.
type heldConn struct {
	conn  net.Conn
	place connPlace // none: not counted (refused or evicted)
	// streams are the streams admitted on the connection and not ended:
	// while there are any, it is not in the evictable ring.
	streams    int
	prev, next *heldConn // in the evictable ring; nil out of it
}

// addrConns counts the connections of one peer address.
type addrConns struct {
	prefix netip.Prefix
	n      int
}

// connPlace is a connection's place in the counts: its address's count,
// or unlimitedAddr when its address is not limited (a trusted proxy's,
// say); none (nil) when it was not counted.
type connPlace struct {
	addr *addrConns
}

// unlimitedAddr is the place of connections counted in the total only.
var unlimitedAddr = &addrConns{}

func newConnLimits(maxTotal, maxPerIP int, trusted func(netip.Addr) bool, refused *prometheus.CounterVec, evicted prometheus.Counter) *connLimits {
	cl := &connLimits{
		maxTotal: maxTotal, maxPerIP: maxPerIP, trusted: trusted, refused: refused, evicted: evicted,
		byAddr: make(map[netip.Prefix]*addrConns),
		conns:  make(map[net.Conn]*heldConn),
	}
	cl.evictable.prev, cl.evictable.next = &cl.evictable, &cl.evictable
	return cl
}

// connState is the http.Server's ConnState hook. HTTP/2 reports its
// connections' states with the same net.Conn: new and closed once per
// connection, idle whenever its last stream ends.
func (cl *connLimits) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		limit, evicted := cl.admit(c)
		if evicted != nil {
			cl.evicted.Inc()
			_ = evicted.Close()
		}
		if limit != "" {
			cl.refused.WithLabelValues(limit).Inc()
			_ = c.Close()
		}
	case http.StateIdle:
		cl.idle(c)
	case http.StateClosed:
		cl.release(cl.take(c))
	}
	// http.StateHijacked: still counted, by whoever took the connection.
}

// admit counts c, evicting another connection (returned, for the caller
// to close) when the total is reached, or says which limit it is over.
func (cl *connLimits) admit(c net.Conn) (limit string, evicted net.Conn) {
	prefix, limited := cl.peer(c)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	hc := &heldConn{conn: c}
	cl.conns[c] = hc
	if a := cl.byAddr[prefix]; limited && a != nil && a.n >= cl.maxPerIP {
		return "per_ip", nil
	}
	if cl.total >= cl.maxTotal {
		old := cl.evictable.next
		if old == &cl.evictable {
			return "total", nil
		}
		cl.unlink(old)
		cl.giveBack(old.place)
		old.place = connPlace{}
		evicted = old.conn
	}
	hc.place = connPlace{addr: unlimitedAddr}
	if limited {
		a := cl.byAddr[prefix]
		if a == nil {
			a = &addrConns{prefix: prefix}
			cl.byAddr[prefix] = a
		}
		a.n++
		hc.place.addr = a
	}
	cl.total++
	cl.pushBack(hc)
	return "", evicted
}

// peer returns the address c counts against, and whether it is limited.
func (cl *connLimits) peer(c net.Conn) (netip.Prefix, bool) {
	if cl.maxPerIP <= 0 {
		return netip.Prefix{}, false
	}
	var addr netip.Addr
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		addr = a.AddrPort().Addr().Unmap()
	} else if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		addr = ap.Addr().Unmap()
	}
	if !addr.IsValid() || cl.trusted(addr) {
		return netip.Prefix{}, false
	}
	return addrPrefix(addr)
}

// idle moves c, if it holds no stream, to the end of the evictable ring: it
// has waited least.
func (cl *connLimits) idle(c net.Conn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if hc := cl.conns[c]; hc != nil && hc.next != nil {
		cl.unlink(hc)
		cl.pushBack(hc)
	}
}

// admitStream records a stream admitted on c, which is not evicted from
// then until endStream, or its taking over (take). It reports false when c
// was evicted, or has closed: the stream must not open. A nil c (a
// connection Serve did not accept) is not counted.
func (cl *connLimits) admitStream(c net.Conn) bool {
	if c == nil {
		return true
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	hc := cl.conns[c]
	if hc == nil || hc.place.addr == nil {
		return false
	}
	hc.streams++
	cl.unlink(hc)
	return true
}

// endStream records the end of a stream admitted on c whose connection was
// not taken over: with no stream left, c can be evicted again.
func (cl *connLimits) endStream(c net.Conn) {
	if c == nil {
		return
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	hc := cl.conns[c]
	if hc == nil || hc.place.addr == nil {
		return
	}
	if hc.streams--; hc.streams == 0 {
		cl.pushBack(hc)
	}
}

// take removes c from the connections net/http holds and returns its
// place, which the caller must give back (release) once: at its closed
// state or, for a connection hijacked from net/http, when whoever took it
// over closes it. A connection not counted has no place.
func (cl *connLimits) take(c net.Conn) connPlace {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	hc := cl.conns[c]
	if hc == nil {
		return connPlace{}
	}
	delete(cl.conns, c)
	cl.unlink(hc)
	return hc.place
}

// release gives a connection's place back, if it has one.
func (cl *connLimits) release(p connPlace) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.giveBack(p)
}

// giveBack is release with cl.mu held.
func (cl *connLimits) giveBack(p connPlace) {
	if p.addr == nil {
		return
	}
	cl.total--
	if a := p.addr; a != unlimitedAddr {
		if a.n--; a.n <= 0 {
			delete(cl.byAddr, a.prefix)
		}
	}
}

// pushBack puts hc at the end of the evictable ring.
func (cl *connLimits) pushBack(hc *heldConn) {
	last := cl.evictable.prev
	hc.prev, hc.next = last, &cl.evictable
	last.next, cl.evictable.prev = hc, hc
}

// unlink takes hc out of the evictable ring, if it is in it.
func (cl *connLimits) unlink(hc *heldConn) {
	if hc.next == nil {
		return
	}
	hc.prev.next, hc.next.prev = hc.next, hc.prev
	hc.prev, hc.next = nil, nil
}

// open returns the number of connections counted, and of peer addresses
// with a count.
func (cl *connLimits) open() (conns, addrs int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.total, len(cl.byAddr)
}

// connKey is the context key of the connection a request came on.
type connKey struct{}

// withConn is the http.Server's ConnContext hook: it gives requests their
// connection (connOf), for admitStream and endStream.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// connOf returns the connection the request of ctx came on, or nil.
func connOf(ctx context.Context) net.Conn {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	return c
}
