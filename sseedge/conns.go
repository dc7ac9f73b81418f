package sseedge

import (
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// connLimits counts the edge's TCP connections, in total and by peer
// address (IPv6 by /64, as MaxConnsPerIP counts), from the moment each is
// accepted until it closes, and closes at once a connection over either
// limit (MaxTCPConns, MaxTCPConnsPerIP), before anything is read from it.
// It follows the connections' states (http.Server.ConnState).
//
// Invariant: a connection admitted is counted exactly once until its place
// is given back, exactly once: by its closed state or, for a connection
// taken over from net/http (hijacked), by whoever took it (take, then
// release when it closes it), since net/http reports no close after a
// hijack. A connection
// refused is never counted, and its closed state finds no place. Nothing is
// kept per connection counted: its place is found again from its address,
// which does not change, so that the counts cost an idle stream no memory.
type connLimits struct {
	maxTotal, maxPerIP int // maxPerIP <= 0: no per-address limit
	trusted            func(netip.Addr) bool
	refused            *prometheus.CounterVec // by limit: per_ip, total

	mu     sync.Mutex
	total  int
	byAddr map[netip.Prefix]*addrConns
	// refusedConns are the connections refused and closed whose closed
	// state net/http has yet to report.
	refusedConns map[net.Conn]struct{}
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

func newConnLimits(maxTotal, maxPerIP int, trusted func(netip.Addr) bool, refused *prometheus.CounterVec) *connLimits {
	return &connLimits{
		maxTotal: maxTotal, maxPerIP: maxPerIP, trusted: trusted, refused: refused,
		byAddr:       make(map[netip.Prefix]*addrConns),
		refusedConns: make(map[net.Conn]struct{}),
	}
}

// connState is the http.Server's ConnState hook. HTTP/2 reports its
// connections' states with the same net.Conn; only new and closed matter
// here, and each comes once per connection.
func (cl *connLimits) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		if limit := cl.admit(c); limit != "" {
			cl.refused.WithLabelValues(limit).Inc()
			_ = c.Close()
		}
	case http.StateClosed:
		cl.release(cl.take(c))
	}
	// http.StateHijacked: still counted, by whoever took the connection.
}

// admit counts c, or says which limit it is over.
func (cl *connLimits) admit(c net.Conn) (limit string) {
	prefix, limited := cl.peer(c)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.total >= cl.maxTotal {
		cl.refusedConns[c] = struct{}{}
		return "total"
	}
	if limited {
		a := cl.byAddr[prefix]
		if a == nil {
			a = &addrConns{prefix: prefix}
			cl.byAddr[prefix] = a
		}
		if a.n >= cl.maxPerIP {
			cl.refusedConns[c] = struct{}{}
			return "per_ip"
		}
		a.n++
	}
	cl.total++
	return ""
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

// take removes c from the connections net/http holds and returns its
// place, which the caller must give back (release) once: at its closed
// state or, for a connection hijacked from net/http, when whoever took it
// over closes it. A connection never counted has no place.
func (cl *connLimits) take(c net.Conn) connPlace {
	prefix, limited := cl.peer(c)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if _, ok := cl.refusedConns[c]; ok {
		delete(cl.refusedConns, c)
		return connPlace{}
	}
	if a := cl.byAddr[prefix]; limited && a != nil {
		return connPlace{addr: a}
	}
	return connPlace{addr: unlimitedAddr}
}

// release gives a connection's place back, if it has one.
func (cl *connLimits) release(p connPlace) {
	if p.addr == nil {
		return
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.total--
	if a := p.addr; a != unlimitedAddr {
		if a.n--; a.n <= 0 {
			delete(cl.byAddr, a.prefix)
		}
	}
}

// open returns the number of connections counted, and of peer addresses
// with a count.
func (cl *connLimits) open() (conns, addrs int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.total, len(cl.byAddr)
}
