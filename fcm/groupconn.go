package fcm

import (
	"net"
	"os"
	"sync"
	"time"
)

// groupConn is a net.Conn whose writes go out in one write(2) when they come
// faster than the kernel takes them: a group commit under the HTTP/2
// transport (and under TLS, for FCM itself).
//
// Why a goroutine of its own: HTTP/2 writes every frame under the client
// connection's write lock (and TLS under its own), so two senders never
// call Write at once; a Write that did its own system call would hold that
// lock through it, and nothing would ever be grouped. Here Write appends
// the bytes to pending and returns, and the conn's writer goroutine writes
// all that is pending in one call. While it is in that call, the next
// senders' frames gather for the next one. A Write that finds the writer
// idle wakes it at once: nothing waits for a timer.
//
// The invariants, under mu:
//   - bytes go out in the order their Writes returned; only the writer
//     writes to the Conn beneath;
//   - pending holds at most maxPending bytes, or one Write's when it came
//     to an empty buffer; a Write that does not fit waits for the writer;
//   - the first failed write fails the conn: the Conn beneath is closed
//     (so its reader sees it), the pending bytes are dropped, and every
//     later Write returns that error.
//
// A Write returns before its bytes reach the kernel, as a write(2) returns
// before they reach the peer: an error shows in a later Write, in Close, or
// as the reader's closed conn.
type groupConn struct {
	net.Conn
	maxPending int

	mu      sync.Mutex
	space   sync.Cond // broadcast when the writer takes the pending bytes or stops
	pending []byte
	busy    bool // the writer has been woken and has not yet gone idle
	err     error
	closed  bool
	// wdl is the write deadline, so that a Write past it fails as the Conn
	// beneath would; the writer's system call has the same deadline.
	wdl time.Time

	wake chan struct{} // cap 1: a token means busy, and the writer has not yet taken it
	done chan struct{} // closed when the writer ends
}

var _ net.Conn = (*groupConn)(nil)

// groupMaxPending bounds the bytes a groupConn holds besides those in its
// system call: 64 KiB, four full HTTP/2 frames or TLS records, far more
// than the few hundred bytes of a send's frames.
const groupMaxPending = 64 << 10

// groupCloseWait bounds how long Close waits for the pending bytes (a TLS
// close_notify, an HTTP/2 GOAWAY) to go out before it closes the conn.
const groupCloseWait = time.Second

func newGroupConn(c net.Conn, maxPending int) *groupConn {
	g := &groupConn{Conn: c, maxPending: maxPending, wake: make(chan struct{}, 1), done: make(chan struct{})}
	g.space.L = &g.mu
	go g.writer()
	return g
}

// Write queues p for the writer and returns len(p), or the conn's error.
func (g *groupConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		switch {
		case g.err != nil:
			return 0, g.err
		case g.closed:
			return 0, net.ErrClosed
		case !g.wdl.IsZero() && !time.Now().Before(g.wdl):
			// Nothing of p is queued, so the conn is not failed.
			return 0, os.ErrDeadlineExceeded
		}
		if len(p) == 0 || len(g.pending) == 0 || len(g.pending)+len(p) <= g.maxPending {
			break
		}
		// Woken when the writer takes the pending bytes, or when its
		// write fails (its deadline is ours).
		g.space.Wait()
	}
	if len(p) == 0 {
		return 0, nil
	}
	g.pending = append(g.pending, p...)
	if !g.busy {
		g.busy = true
		g.wake <- struct{}{}
	}
	return len(p), nil
}

// writer writes what is pending, in one call each time, until the conn
// is closed.
func (g *groupConn) writer() {
	defer close(g.done)
	var buf []byte
	for range g.wake {
		g.mu.Lock()
		for len(g.pending) > 0 && g.err == nil {
			buf, g.pending = g.pending, buf[:0]
			g.space.Broadcast()
			g.mu.Unlock()
			_, err := g.Conn.Write(buf)
			g.mu.Lock()
			if err != nil {
				g.err = err
				g.pending = nil
				g.Conn.Close()
			}
		}
		g.busy = false
		g.space.Broadcast()
		stop := g.closed || g.err != nil
		g.mu.Unlock()
		if stop {
			return
		}
	}
}

// Close writes what is pending, for at most groupCloseWait, then closes
// the conn, and reports a failed write if there was one. A second Close, or
// one after a failed write, closes it at once. A close that must not wait
// at all sets a past write deadline first (tls.Conn's Close does, after
// its close_notify, which is then most likely dropped).
func (g *groupConn) Close() error {
	g.mu.Lock()
	first := !g.closed && g.err == nil
	g.closed = true
	if first && !g.busy {
		// Wake the writer so that it sees closed and ends.
		g.busy = true
		g.wake <- struct{}{}
	}
	g.mu.Unlock()
	timedOut := false
	if first {
		t := time.NewTimer(groupCloseWait)
		select {
		case <-g.done:
		case <-t.C:
			timedOut = true
		}
		t.Stop()
	}
	err := g.Conn.Close()
	if timedOut {
		// Closing the conn beneath fails the writer's system call at once;
		// its error says that bytes were dropped.
		<-g.done
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		// Some bytes did not go out.
		return g.err
	}
	return err
}

func (g *groupConn) SetDeadline(t time.Time) error {
	g.mu.Lock()
	g.wdl = t
	g.mu.Unlock()
	return g.Conn.SetDeadline(t)
}

func (g *groupConn) SetWriteDeadline(t time.Time) error {
	g.mu.Lock()
	g.wdl = t
	g.mu.Unlock()
	return g.Conn.SetWriteDeadline(t)
}
