package sseedge

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// idleConns closes a connection that has carried no request for the
// timeout: an HTTP/1.1 keep-alive connection between requests, or an
// HTTP/2 connection with no stream open. It follows the connections'
// states (http.Server.ConnState) and stands in for http.Server.IdleTimeout,
// which the edge cannot use: net/http's HTTP/2 server stops its idle
// timer when a connection ends, then closes the streams still open, and
// closing the last one starts the timer again. Every connection a client
// drops with a stream open (an SSE connection always has one) then stays
// reachable from the timer, about 6.5 KiB each, for the whole timeout.
//
// A connection that leaves the idle state here is forgotten at once, and
// the timer's function reaches only an idleConn whose conn is cleared, so a
// stopped timer the runtime has not yet let go of holds a few bytes.
type idleConns struct {
	timeout time.Duration

	mu   sync.Mutex
	idle map[net.Conn]*idleConn
}

type idleConn struct {
	conn  net.Conn // nil once the connection is active again, or closed
	timer *time.Timer
}

func newIdleConns(timeout time.Duration) *idleConns {
	return &idleConns{timeout: timeout, idle: make(map[net.Conn]*idleConn)}
}

// connState is the http.Server's ConnState hook. The HTTP/2 server reports
// a connection's states too: idle when its last stream ends, active when a
// stream opens. Closed always comes last, after the idle state HTTP/2
// reports while it closes the connection's streams.
func (ic *idleConns) connState(c net.Conn, state http.ConnState) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if e := ic.idle[c]; e != nil {
		e.conn = nil
		e.timer.Stop()
		delete(ic.idle, c)
	}
	if state != http.StateIdle {
		return
	}
	e := &idleConn{conn: c}
	e.timer = time.AfterFunc(ic.timeout, func() { ic.expire(e) })
	ic.idle[c] = e
}

// expire closes e's connection if it is still idle.
func (ic *idleConns) expire(e *idleConn) {
	ic.mu.Lock()
	c := e.conn
	if c != nil {
		e.conn = nil
		delete(ic.idle, c)
	}
	ic.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}
