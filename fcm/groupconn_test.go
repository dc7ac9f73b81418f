package fcm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stepConn is the conn beneath a groupConn, whose writes finish one at a
// time when the test says: each Write tells entered, then waits for its
// result on finish, or for Close.
type stepConn struct {
	net.Conn // nil: only Write and Close are used
	entered  chan struct{}
	finish   chan error

	mu       sync.Mutex
	writes   []string
	closed   chan struct{}
	closeOne sync.Once
}

func newStepConn() *stepConn {
	return &stepConn{entered: make(chan struct{}, 16), finish: make(chan error), closed: make(chan struct{})}
}

func (s *stepConn) Write(p []byte) (int, error) {
	s.entered <- struct{}{}
	select {
	case err := <-s.finish:
		if err != nil {
			return 0, err
		}
	case <-s.closed:
		return 0, net.ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, string(p))
	return len(p), nil
}

func (s *stepConn) Close() error {
	s.closeOne.Do(func() { close(s.closed) })
	return nil
}

func (s *stepConn) written() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
		t.Fatalf("Write(%q) = %d, %v", s, n, err)
	}
}

// TestGroupConnGroupsWhileWriting: the bytes that come while a write is in
// the kernel go out together in the next, in order; Close writes what is
// pending, and later Writes fail.
func TestGroupConnGroupsWhileWriting(t *testing.T) {
	t.Parallel()
	s := newStepConn()
	g := newGroupConn(s, 1024)
	write(t, g, "a")
	<-s.entered // the writer is in its write of "a"
	write(t, g, "b")
	write(t, g, "cd")
	s.finish <- nil
	<-s.entered // "bcd" together
	write(t, g, "e")
	closed := make(chan error)
	go func() { closed <- g.Close() }()
	s.finish <- nil
	<-s.entered
	s.finish <- nil
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, want := strings.Join(s.written(), "|"), "a|bcd|e"; got != want {
		t.Fatalf("writes %q, want %q", got, want)
	}
	if _, err := g.Write([]byte("f")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	select {
	case <-s.closed:
	default:
		t.Fatal("Close left the conn beneath open")
	}
}

// TestGroupConnFailedWriteFailsConn: after a write fails, the pending bytes
// are dropped, the conn beneath is closed, and every Write and Close
// reports the error.
func TestGroupConnFailedWriteFailsConn(t *testing.T) {
	t.Parallel()
	s := newStepConn()
	g := newGroupConn(s, 1024)
	boom := errors.New("boom")
	write(t, g, "a")
	<-s.entered
	write(t, g, "b")
	s.finish <- boom
	<-g.done // the writer ends with the conn failed
	if _, err := g.Write([]byte("c")); !errors.Is(err, boom) {
		t.Fatalf("Write after the failure: %v, want %v", err, boom)
	}
	select {
	case <-s.closed:
	default:
		t.Fatal("the failed conn beneath is still open")
	}
	if err := g.Close(); err == nil {
		t.Fatal("Close of a failed conn returned nil")
	}
	if w := s.written(); len(w) != 0 {
		t.Fatalf("written %q after a failure", w)
	}
}

// TestGroupConnBoundsPending: a Write that does not fit waits for the
// writer to take the pending bytes; one larger than the bound goes alone.
func TestGroupConnBoundsPending(t *testing.T) {
	t.Parallel()
	s := newStepConn()
	g := newGroupConn(s, 4)
	write(t, g, "a")
	<-s.entered
	write(t, g, "bcd")
	wrote := make(chan struct{})
	go func() {
		write(t, g, "ef") // 3 + 2 > 4: waits for the writer to take "bcd"
		write(t, g, "0123456789")
		close(wrote)
	}()
	for range 3 {
		s.finish <- nil
		<-s.entered
	}
	s.finish <- nil
	<-wrote
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(s.written(), "|"), "a|bcd|ef|0123456789"; got != want {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

// TestGroupConnSecondCloseForces: a Close waiting for a stuck write is
// ended by a second Close (as HTTP/2's forced close of a TLS conn does).
func TestGroupConnSecondCloseForces(t *testing.T) {
	t.Parallel()
	s := newStepConn()
	g := newGroupConn(s, 1024)
	write(t, g, "a")
	<-s.entered
	closed := make(chan error)
	go func() { closed <- g.Close() }()
	for {
		g.mu.Lock()
		first := g.closed
		g.mu.Unlock()
		if first {
			break
		}
		runtime.Gosched()
	}
	_ = g.Close()
	if err := <-closed; err == nil {
		t.Fatal("the first Close reported the unwritten bytes written")
	}
	<-g.done
}

// tcpPair is a loopback TCP connection: the client's end in a groupConn.
func tcpPair(t *testing.T) (*groupConn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	g := newGroupConn(c, groupMaxPending)
	t.Cleanup(func() {
		g.Close()
		peer.Close()
	})
	return g, peer
}

// TestGroupConnKeepsOrder: writers that take turns under a lock, as HTTP/2's
// do, and writers that do not, over TCP: every Write arrives whole, and
// each writer's in its order.
func TestGroupConnKeepsOrder(t *testing.T) {
	t.Parallel()
	g, peer := tcpPair(t)
	const writers, each = 8, 500
	var turn sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				line := fmt.Sprintf("%d %d %s\n", w, i, strings.Repeat("x", (w*each+i)%300))
				if w%2 == 0 {
					turn.Lock()
				}
				_, err := g.Write([]byte(line))
				if w%2 == 0 {
					turn.Unlock()
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		g.Close()
	}()
	next := make([]int, writers)
	r := bufio.NewScanner(peer)
	lines := 0
	for r.Scan() {
		f := strings.Fields(r.Text())
		if len(f) < 2 || len(f) > 3 {
			t.Fatalf("line %q torn", r.Text())
		}
		w, _ := strconv.Atoi(f[0])
		i, _ := strconv.Atoi(f[1])
		pad := strings.Join(f[2:], "")
		if w < 0 || w >= writers || i != next[w] || len(pad) != (w*each+i)%300 {
			t.Fatalf("writer %d: line %q, want number %d", w, r.Text(), next[w])
		}
		next[w]++
		lines++
	}
	if lines != writers*each {
		t.Fatalf("%d lines, want %d", lines, writers*each)
	}
}

// TestGroupConnWriteDeadline: a write stuck on a peer that does not read
// ends at the write deadline, fails the conn, and the reader sees it
// closed.
func TestGroupConnWriteDeadline(t *testing.T) {
	t.Parallel()
	g, _ := tcpPair(t)
	_ = g.Conn.(*net.TCPConn).SetWriteBuffer(4096)
	chunk := make([]byte, groupMaxPending/2)
	errs := make(chan error, 1)
	go func() {
		for {
			if _, err := g.Write(chunk); err != nil {
				errs <- err
				return
			}
		}
	}()
	// Once pending is full, the writer has bytes to write that the kernel
	// will not take: a deadline now fails its write.
	for {
		g.mu.Lock()
		full := len(g.pending) == groupMaxPending
		g.mu.Unlock()
		if full {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := g.SetWriteDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	<-g.done
	if _, err := g.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read of the failed conn: %v, want it closed", err)
	}
	if _, err := g.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write after the failure: %v", err)
	}
}

// TestGroupConnPastDeadlineQueuesNothing: a Write past the deadline fails
// as a plain conn's does, before queuing, and leaves the conn usable.
func TestGroupConnPastDeadlineQueuesNothing(t *testing.T) {
	t.Parallel()
	g, peer := tcpPair(t)
	_ = g.SetDeadline(time.Now().Add(-time.Second))
	if _, err := g.Write([]byte("lost\n")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the deadline: %v", err)
	}
	_ = g.SetDeadline(time.Time{})
	write(t, g, "kept\n")
	line, err := bufio.NewReader(peer).ReadString('\n')
	if err != nil || line != "kept\n" {
		t.Fatalf("peer read %q, %v; want only the Write after the deadline was lifted", line, err)
	}
}

// TestGroupedTransportHTTP1: over HTTP/1.1, a connection a request, the
// grouped transport answers as the plain one.
func TestGroupedTransportHTTP1(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(echoProto)
	defer srv.Close()
	tr := transport(false, true)
	defer tr.CloseIdleConnections()
	postEach(t, &http.Client{Transport: tr}, srv.URL, 40, 100, "HTTP/1.1")
}

// echoProto answers a request with its protocol and its body.
var echoProto = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	_, _ = w.Write(append([]byte(r.Proto+" "), b...))
})

// postEach posts n bodies at once to url (the i-th padded with i*pad
// bytes) and fails unless each comes back whole over proto (echoProto).
func postEach(t *testing.T, c *http.Client, url string, n, pad int, proto string) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			body := strconv.Itoa(i) + strings.Repeat(".", i*pad)
			resp, err := c.Post(url, "text/plain", strings.NewReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || string(got) != proto+" "+body {
				t.Errorf("request %d answered %.20q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
}

// TestGroupedTransportHTTP2TLS: over TLS, where HTTP/2 comes by ALPN as at
// FCM, concurrent requests share grouped connections and each gets its own
// answer.
func TestGroupedTransportHTTP2TLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(echoProto)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	tr := transport(false, true)
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	defer tr.CloseIdleConnections()
	postEach(t, &http.Client{Transport: tr}, srv.URL, 200, 50, "HTTP/2.0")
}
