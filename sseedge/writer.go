package sseedge

import (
	"context"
	"errors"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The writers serve the HTTP/1.1 streams taken over from net/http, so that
// an idle stream costs no goroutine and no buffers: once the response
// headers and the first bytes are written, the handler hijacks the
// connection, keeps a duplicate of its socket and closes the net.Conn (see
// wire), and returns. From then on
//
//   - a poller (epoll) watches every connection, and closes a stream whose
//     client has gone (client_closed);
//   - a stream with something to write (events, a heartbeat, a catch-up from
//     history, its end) is handed to a small pool of writer goroutines, with
//     buffers of their own, which write to the socket without blocking; an
//     event for a channel that one stream reads (a user's, mostly) is
//     written the same way by the Pub/Sub reader itself (pumpHere);
//   - a stream whose socket is full, or that must read history, is handed to
//     a goroutine of its own until it has written everything it has, with a
//     jittered write deadline (write_timeout);
//   - one ticker finds the streams due a heartbeat, and those whose token
//     has expired.
//
// The body is written with the chunked transfer coding net/http began.
// HTTP/2 and HTTP/1.0 streams, and connections the edge cannot take over
// (TLS, a listener other than TCP, a platform without epoll), stay on
// net/http's goroutine per stream.
type writers struct {
	s   *Server
	ctx context.Context // for history reads and logs; ends after the drain
	// poller watches the connections for clients that went away.
	poller *poller
	// work carries the streams that have something to write to the pool.
	work chan *stream
	// alone counts the goroutines serving one stream each, and the ends.
	alone sync.WaitGroup

	// epoch is when the writers were made: stream.lastWrite counts from
	// it, on the monotonic clock (see clock).
	epoch time.Time

	// spare holds buffers for pumpHere (*pumpBuffers).
	spare sync.Pool
}

// pumpBuffers are the buffers of a pump outside the pool.
type pumpBuffers struct {
	buf   []byte
	batch []*outEvent
}

// wire is a stream's connection once taken over. The edge keeps the bare
// socket: adopt duplicates net/http's descriptor and closes the net.Conn, so
// that an idle stream holds no netFD, addresses or runtime poll descriptor.
// A write that must wait for the socket (a slow client, a catch-up, the last
// chunk) goes through an *os.File made on the socket when first needed,
// which then owns it.
type wire struct {
	writers *writers
	st      *stream
	// fd is the socket, which the pool writes to directly. It stays valid
	// while the stream has a writer: only end closes it, after the last.
	fd    int
	token int32 // the poller's registration
	// broken is set, by the stream's writer, when a write failed: the
	// connection may hold part of a chunk, so the stream ends without its
	// last chunk.
	broken bool
	// file is fd as an *os.File, for writes with a deadline; guarded by
	// st.mu, so that cut finds it.
	file *os.File
	// place is the connection's place in the TCP connection counts, given
	// back when the socket is closed.
	place connPlace
}

func newWriters(ctx context.Context, s *Server, p *poller) *writers {
	return &writers{
		s:      s,
		ctx:    ctx,
		poller: p,
		// A stream waits in work at most once: with room for every
		// stream, handing one over does not wait.
		work:  make(chan *stream, s.cfg.MaxConns),
		epoch: time.Now(),
	}
}

// clock is the time since the writers were made, in nanoseconds: when a
// stream was last written to.
func (ws *writers) clock() int64 { return int64(time.Since(ws.epoch)) }

// run serves until ws.ctx is done: the poller, the pool and the ticker. The
// streams must have ended by then (the drain ends them).
func (ws *writers) run() {
	ctx := ws.ctx
	var wg sync.WaitGroup
	wg.Go(func() { ws.poller.run(ctx) })
	wg.Go(func() { ws.tick(ctx) })
	for range max(2, runtime.GOMAXPROCS(0)) {
		wg.Go(func() { ws.write(ctx) })
	}
	wg.Wait()
	ws.alone.Wait()
}

// adopt takes st over on nc, a hijacked connection whose response headers
// and first bytes are written, and whose place in the TCP connection counts
// is place. It reports false when nc cannot be watched: the caller then
// ends the stream, and gives the place back.
func (ws *writers) adopt(st *stream, nc net.Conn, place connPlace) bool {
	fd, err := takeSocket(nc)
	if err != nil {
		return false
	}
	w := &wire{writers: ws, st: st, fd: fd, place: place}
	if err := ws.poller.add(w); err != nil {
		ws.s.log.Warn("cannot watch a connection", slog.Any("err", err))
		closeSocket(fd)
		return false
	}
	// The duplicate holds the connection open: the net.Conn, with its
	// buffers and poll registration, goes.
	_ = nc.Close()
	ws.s.handlers.Add(1) // until finish
	// Whatever arrived while the stream was opening is written now. The
	// wake channel served the handler goroutine, which is done with it.
	st.mu.Lock()
	st.out = w
	st.wake = nil
	st.lastWrite = ws.clock()
	st.busy = true
	st.mu.Unlock()
	ws.schedule(st)
	return true
}

// takeSocket returns a duplicate of nc's socket descriptor, close-on-exec
// and, like nc's, non-blocking.
func takeSocket(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, errors.ErrUnsupported
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = dupSocket(int(s)) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// schedule hands st, which has something to do, to the pool.
func (ws *writers) schedule(st *stream) {
	select {
	case ws.work <- st: // room for every stream: no select on ctx as well
		return
	default:
	}
	select {
	case ws.work <- st:
	case <-ws.ctx.Done():
	}
}

// write is one of the pool's goroutines.
func (ws *writers) write(ctx context.Context) {
	var (
		buf   []byte
		batch []*outEvent
	)
	for {
		var st *stream
		select {
		case st = <-ws.work: // one waiting: no select on ctx as well
		default:
			select {
			case <-ctx.Done():
				return
			case st = <-ws.work:
			}
		}
		buf, batch = ws.pump(st, false, buf, batch)
		if cap(buf) > 64<<10 {
			buf = nil // after a burst of large events
		}
		// The events written are done with: let them go now rather than
		// at this writer's next use.
		clear(batch[:cap(batch)])
	}
}

// pumpHere writes what st, held by the caller (stream.offerHeld), has to
// write, on the caller's goroutine, as a writer of the pool would, and never
// blocks: a full socket or a catch-up goes on in a goroutine of its own.
// The Pub/Sub reader calls it for an event to a single stream, so that the
// event costs no goroutine wake-up between the read from Redis and the
// write to the client: at low rates, each wake-up of an idle writer cost a
// thread wake-up too.
func (ws *writers) pumpHere(st *stream) {
	b, _ := ws.spare.Get().(*pumpBuffers)
	if b == nil {
		b = new(pumpBuffers)
	}
	b.buf, b.batch = ws.pump(st, false, b.buf, b.batch)
	if cap(b.buf) > 64<<10 {
		b.buf = nil
	}
	clear(b.batch[:cap(b.batch)])
	ws.spare.Put(b)
}

// chunkRoom is the room left before a chunk's data for its size line: up to
// 8 hex digits and CRLF.
const chunkRoom = 10

// pump writes what st has to write until it has nothing more, then releases
// it. Unless block is set it never blocks: a stream whose socket is full, or
// that must read history, goes on in a goroutine of its own. It returns its
// buffers for reuse.
func (ws *writers) pump(st *stream, block bool, buf []byte, batch []*outEvent) ([]byte, []*outEvent) {
	s := ws.s
	w := st.out
	for {
		var (
			resync, heartbeat, ok bool
			reason                CloseReason
		)
		batch, resync, heartbeat, reason, ok = st.take(batch[:0])
		switch {
		case !ok:
			return buf, batch
		case reason != "":
			ws.end(st, reason)
			return buf, batch
		case resync && !block:
			// Reading history may block: a goroutine of its own does it.
			st.mu.Lock()
			st.resync = true
			st.mu.Unlock()
			ws.goAlone(st, nil, nil)
			return buf, batch
		}
		buf = append(buf[:0], make([]byte, chunkRoom)...)
		var written []*outEvent
		if resync {
			var r CloseReason
			if buf, r = s.catchUp(ws.ctx, buf, st); r != "" {
				st.close(r)
				continue
			}
		} else {
			buf, written = s.appendEvents(buf, st, batch)
		}
		if len(buf) == chunkRoom && heartbeat {
			buf = appendComment(buf, "hb")
		}
		if len(buf) == chunkRoom {
			s.pageWritten(st)
			continue
		}
		b := chunk(buf)
		if block {
			if r := w.writeOpen(b, s.cfg.WriteTimeout); r != "" {
				st.close(r)
				continue
			}
			// A page of a catch-up is written only blocking: once it is,
			// it is no longer held.
			s.pageWritten(st)
		} else {
			n, err := writeNow(w.fd, b)
			switch {
			case errors.Is(err, syscall.EAGAIN):
				// The socket is full: a goroutine of its own waits for it,
				// with the rest of the chunk and what it carries.
				ws.goAlone(st, b[n:], written)
				return buf, batch
			case err != nil:
				w.broken = true
				st.close(writeFailed(err))
				continue
			}
		}
		ws.wrote(st, written)
	}
}

// goAlone serves st in a goroutine of its own, which may block: it writes
// rest (and counts written) first.
func (ws *writers) goAlone(st *stream, rest []byte, written []*outEvent) {
	rest = append([]byte(nil), rest...)
	written = append([]*outEvent(nil), written...)
	ws.alone.Go(func() {
		if len(rest) > 0 {
			if r := st.out.writeOpen(rest, ws.s.cfg.WriteTimeout); r != "" {
				st.close(r)
			} else {
				ws.wrote(st, written)
			}
		}
		ws.pump(st, true, nil, nil)
	})
}

// wrote records a write: the events it carried, and when.
func (ws *writers) wrote(st *stream, written []*outEvent) {
	ws.s.delivered(ws.ctx, st, written)
	now := ws.clock()
	st.mu.Lock()
	st.lastWrite = now
	st.mu.Unlock()
}

// osFile returns the socket as an *os.File, made on first use; from then
// on it owns the socket.
func (w *wire) osFile() *os.File {
	w.st.mu.Lock()
	defer w.st.mu.Unlock()
	if w.file == nil {
		w.file = os.NewFile(uintptr(w.fd), "sse")
	}
	return w.file
}

// close closes the socket, and gives its place in the TCP connection
// counts back; end calls it once.
func (w *wire) close() {
	defer w.writers.s.conns.release(w.place)
	w.st.mu.Lock()
	f := w.file
	w.st.mu.Unlock()
	if f != nil {
		_ = f.Close()
		return
	}
	closeSocket(w.fd)
}

// writeOpen is writeBlocking for an open stream: a stream closed meanwhile
// is not written to, and a close during the write (cut) ends it at once.
func (w *wire) writeOpen(b []byte, timeout time.Duration) CloseReason {
	f := w.osFile()
	timeout += time.Duration(mathrand.Int64N(int64(timeout)/10 + 1))
	_ = f.SetWriteDeadline(time.Now().Add(timeout))
	// After the deadline: a cut after this check moves it to now.
	if r := w.st.closed(); r != "" {
		return r
	}
	_, err := f.Write(b)
	_ = f.SetWriteDeadline(time.Time{})
	if err == nil {
		return ""
	}
	w.broken = true
	if r := w.st.closed(); r != "" {
		return r
	}
	return writeFailed(err)
}

// cutLocked ends a write of the stream's that is blocked on a full socket,
// so that a stream closed to free memory frees it now, not at its write
// timeout. The stream must be closed, and its caller holds st.mu. Without a
// file no write waits: one that starts after the close sees it.
func (w *wire) cutLocked() {
	if w.file != nil {
		_ = w.file.SetWriteDeadline(time.Now())
	}
}

// writeBlocking writes b, waiting for the socket up to timeout, jittered by
// up to a tenth so that stalled clients are not all cut off at once.
func (w *wire) writeBlocking(b []byte, timeout time.Duration) CloseReason {
	n, err := writeNow(w.fd, b)
	if err == nil {
		return ""
	}
	if !errors.Is(err, syscall.EAGAIN) {
		w.broken = true
		return writeFailed(err)
	}
	f := w.osFile()
	timeout += time.Duration(mathrand.Int64N(int64(timeout)/10 + 1))
	_ = f.SetWriteDeadline(time.Now().Add(timeout))
	_, err = f.Write(b[n:])
	_ = f.SetWriteDeadline(time.Time{})
	if err == nil {
		return ""
	}
	w.broken = true
	return writeFailed(err)
}

// writeFailed says why a stream whose write failed with err ends.
func writeFailed(err error) CloseReason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return CloseWriteTimeout
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		// The client hung up before the poller saw it.
		return CloseClientClosed
	default:
		return CloseWriteError
	}
}

// end ends st, which its caller holds: the stream stays busy, so no writer
// takes it again. The last chunk (after a jittered retry: field, for a
// drain) is written and the connection closed in a goroutine, which then
// cleans up as a handler would. A replaced stream gets herald.replaced.
func (ws *writers) end(st *stream, reason CloseReason) {
	w := st.out
	ws.poller.remove(w)
	ws.alone.Go(func() {
		// Counted before the client can see the end.
		counted := ws.s.count(st)
		// A client that hung up, or that stopped reading (slow_consumer,
		// write_timeout), is not written to again: a blocking write to it
		// would hold the stream, its lease and its socket for the whole
		// write timeout.
		if !w.broken && reason != CloseClientClosed && reason != CloseSlowConsumer && reason != CloseWriteTimeout {
			var b []byte
			switch reason {
			case CloseServerDrain:
				b = chunk(appendRetry(make([]byte, chunkRoom), ws.s.drainRetry()))
			case CloseReplaced:
				b = chunk(ws.s.appendReplaced(make([]byte, chunkRoom)))
			}
			_ = w.writeBlocking(append(b, "0\r\n\r\n"...), ws.s.cfg.WriteTimeout)
		}
		w.close()
		ws.s.finish(ws.ctx, st, counted)
		ws.s.handlers.Done()
	})
}

// chunk turns b[chunkRoom:] into a chunk of the chunked transfer coding,
// and returns it. The data must not be empty: an empty chunk ends the body.
func chunk(b []byte) []byte {
	var size [chunkRoom]byte
	line := strconv.AppendInt(size[:0], int64(len(b)-chunkRoom), 16)
	line = append(line, '\r', '\n')
	start := chunkRoom - len(line)
	copy(b[start:], line)
	return append(b, '\r', '\n')[start:]
}

// tick marks the streams due a heartbeat, and closes those whose token has
// expired, until ctx is done. One ticker serves every stream: a heartbeat
// comes between Heartbeat and Heartbeat plus a tick after the last write.
func (ws *writers) tick(ctx context.Context) {
	sweep(ctx, ws.s, ws.clock, func(now, clock int64, due, expired []*stream) ([]*stream, []*stream) {
		// The poller's set of connections is the set of streams taken
		// over: a stream joins it in adopt and leaves it in end.
		ws.poller.each(func(w *wire) {
			st := w.st
			st.mu.Lock()
			switch {
			case st.out == nil:
				// Being adopted: adopt hands it to a writer.
			case clock >= st.expires:
				expired = append(expired, st)
			case !st.busy && time.Duration(now-st.lastWrite) >= ws.s.cfg.Heartbeat:
				st.heartbeat, st.busy = true, true
				due = append(due, st)
			}
			st.mu.Unlock()
		})
		return due, expired
	}, ws.schedule)
}
