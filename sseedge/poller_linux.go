//go:build linux

package sseedge

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"io"
	"log/slog"
	"sync"
)

// poller watches taken-over connections with epoll, edge-triggered, and
// closes the stream of a client that hung up (client_closed). It reads and
// drops what a client sends: an SSE client sends nothing after its request.
type poller struct {
	log  *slog.Logger
	epfd int
	wake [2]int // a pipe whose read end, token 0, ends run

	mu     sync.Mutex
	closed bool
	conns  map[int32]*wire // by token
	next   int32
}

// pollEvents are the events a connection is watched for: the client sent
// something, or hung up.
const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET

func newPoller(log *slog.Logger) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	p := &poller{log: log, epfd: epfd, conns: make(map[int32]*wire)}
	if err := unix.Pipe2(p.wake[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		_ = unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.release()
		return nil, err
	}
	return p, nil
}

// errPollerClosed is returned by add after the poller stopped.
var errPollerClosed = errors.New("sseedge: poller closed")

// add watches w.
func (p *poller) add(w *wire) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errPollerClosed
	}
	// Tokens are not reused while in use, so an event read just before
	// a connection was removed cannot reach the stream of another.
	for {
		if p.next++; p.next <= 0 {
			p.next = 1
		}
		if _, used := p.conns[p.next]; !used {
			break
		}
	}
	ev := unix.EpollEvent{Events: pollEvents, Fd: p.next}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, w.fd, &ev); err != nil {
		return err
	}
	w.token = p.next
	p.conns[w.token] = w
	return nil
}

// remove stops watching w. It must be called before w's socket is closed:
// once it returns, the poller no longer reads from the socket.
func (p *poller) remove(w *wire) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, w.token)
	if p.closed {
		return
	}
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, w.fd, nil)
}

// each calls f for every connection watched, with p.mu held: f must not
// call the poller.
func (p *poller) each(f func(*wire)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.conns {
		f(w)
	}
}

// run waits for events until ctx is done.
func (p *poller) run(ctx context.Context) {
	defer p.release()
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.closed {
			_, _ = unix.Write(p.wake[1], []byte{0})
		}
	})
	defer stop()
	events := make([]unix.EpollEvent, 256)
	buf := make([]byte, 512)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.log.Error("epoll wait failed: closed clients are found by their next write", slog.Any("err", err))
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == 0 {
				return
			}
			// The socket is read with mu held: remove, which comes before
			// the socket is closed, waits, so its number cannot have been
			// reused by another connection.
			p.mu.Lock()
			w := p.conns[ev.Fd]
			if w == nil {
				p.mu.Unlock()
				continue
			}
			hup := ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
			open, more := true, false
			if !hup {
				open, more = discard(w.fd, buf)
				if open && more {
					p.rearmLocked(w)
				}
			}
			p.mu.Unlock()
			if hup || !open {
				w.st.close(CloseClientClosed)
			}
		}
	}
}

// discard reads and drops what the client on socket fd sent, up to a bound
// per call. It reports whether the client is still there and, if it is,
// whether it left more to read.
func discard(fd int, buf []byte) (open, more bool) {
	for range 16 {
		n, err := unix.Read(fd, buf)
		switch {
		case n > 0 || errors.Is(err, unix.EINTR):
			continue
		case n == 0 && err == nil:
			return false, false // end of file
		default:
			return errors.Is(err, unix.EAGAIN), false
		}
	}
	return true, true
}

// rearmLocked has epoll report w again, after the streams waiting behind
// it: w still has bytes to read, and an edge-triggered watch reports only
// what arrives next, which, once the socket's buffer is full, nothing does.
// The caller holds p.mu.
func (p *poller) rearmLocked(w *wire) {
	if p.closed || p.conns[w.token] != w {
		return
	}
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, w.fd, &unix.EpollEvent{Events: pollEvents, Fd: w.token})
}

// release closes the poller's descriptors.
func (p *poller) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	_ = unix.Close(p.epfd)
	_ = unix.Close(p.wake[0])
	_ = unix.Close(p.wake[1])
}

// writeNow writes what of b the socket fd takes without waiting, and
// returns how much that was. Its error is unix.EAGAIN when the socket
// filled before b was written.
func writeNow(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(fd, b[n:])
		switch {
		case m > 0:
			n += m
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return n, err
		default:
			return n, io.ErrShortWrite
		}
	}
	return n, nil
}

// dupSocket returns a close-on-exec duplicate of socket fd.
func dupSocket(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// closeSocket closes a socket descriptor.
func closeSocket(fd int) { _ = unix.Close(fd) }
