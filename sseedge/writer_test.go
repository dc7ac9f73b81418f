package sseedge_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// rawStream is a stream on a bare connection, as heraldbench holds them:
// nothing on the client side runs unless the test reads.
type rawStream struct {
	conn net.Conn
	resp *http.Response
	dec  *sseedge.Decoder
}

// openRaw opens a stream for tok on a bare HTTP/1.1 connection and reads
// its first bytes, written once the stream is set up.
func openRaw(tb testing.TB, e *testEdge, tok string) *rawStream {
	tb.Helper()
	return openRawVia(tb, &net.Dialer{}, e, tok)
}

func openRawVia(tb testing.TB, d *net.Dialer, e *testEdge, tok string) *rawStream {
	tb.Helper()
	return openRawProto(tb, d, e, tok, "HTTP/1.1")
}

func openRawProto(tb testing.TB, d *net.Dialer, e *testEdge, tok, proto string) *rawStream {
	tb.Helper()
	conn, err := d.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, "GET /v1/events?access_token="+tok+" "+proto+"\r\nHost: edge\r\n\r\n"); err != nil {
		tb.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("status %s", resp.Status)
	}
	if _, err := resp.Body.Read(make([]byte, 512)); err != nil {
		tb.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return &rawStream{conn: conn, resp: resp, dec: sseedge.NewDecoder(resp.Body)}
}

// openConns reads herald_sse_connections_open.
func (e *testEdge) openConns() float64 {
	return e.metric("herald_sse_connections_open")
}

// An idle HTTP/1.1 stream costs the edge no goroutine: 500 of them leave
// the goroutine count flat, still receive events, and are freed, leases
// and all, when their clients hang up.
func TestIdleStreamsHoldNoGoroutine(t *testing.T) {
	e := newTestEdge(t, sseedge.Config{})
	const n = 500
	before := runtime.NumGoroutine()
	users := make([]string, n)
	streams := make([]*rawStream, n)
	for i := range n {
		users[i] = freshUser("idle")
		streams[i] = openRaw(t, e, tokenFor(t, users[i], time.Hour))
	}
	// A handler goroutine returns just after its stream's first write.
	testenv.WaitFor(t, 10*time.Second, "the handlers to return", func() bool {
		return runtime.NumGoroutine()-before < n/10
	})
	if got := e.openConns(); got != n {
		t.Fatalf("connections_open = %v, want %d", got, n)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		id := e.publish(t, users[i], []byte("to an idle stream"))
		if ev := readUntil(t, streams[i].dec, id); ev.Data != "to an idle stream" {
			t.Fatalf("data %q", ev.Data)
		}
	}

	for _, st := range streams {
		st.conn.Close()
	}
	waitClosed(t, e, sseedge.CloseClientClosed, n)
	testenv.WaitFor(t, 10*time.Second, "every lease removed", func() bool {
		online, err := e.reg.Online(context.Background(), users...)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range online {
			if c != 0 {
				return false
			}
		}
		return true
	})
	if got := e.openConns(); got != 0 {
		t.Fatalf("connections_open = %v after every client hung up", got)
	}
}

// A client that half-closes its connection, or sends bytes after its
// request, is handled like net/http handles it: hanging up closes the
// stream, stray bytes are ignored.
func TestClientBytesAndHangUp(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	chatty := openRaw(t, e, tokenFor(t, "chatty", time.Hour))
	if _, err := io.WriteString(chatty.conn, strings.Repeat("stray bytes\r\n", 1000)); err != nil {
		t.Fatal(err)
	}
	id := e.publish(t, "chatty", []byte("despite the noise"))
	if ev := readUntil(t, chatty.dec, id); ev.Data != "despite the noise" {
		t.Fatalf("data %q", ev.Data)
	}

	half := openRaw(t, e, tokenFor(t, "half", time.Hour))
	if err := half.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, e, sseedge.CloseClientClosed, 1)
	if got := e.openConns(); got != 1 {
		t.Fatalf("connections_open = %v, want 1 (the chatty client)", got)
	}
}

// An HTTP/1.0 response is not chunked: its stream is served as it was
// opened, and works.
func TestHTTP10(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	st := openRawProto(t, &net.Dialer{}, e, tokenFor(t, "old", time.Hour), "HTTP/1.0")
	if st.resp.ProtoMinor != 0 || len(st.resp.TransferEncoding) != 0 {
		t.Fatalf("response %s, transfer encoding %v; want HTTP/1.0, unchunked", st.resp.Proto, st.resp.TransferEncoding)
	}
	e.publish(t, "old", []byte("over HTTP/1.0"))
	var wire strings.Builder
	buf := make([]byte, 512)
	for !strings.Contains(wire.String(), "data: over HTTP/1.0\n\n") {
		n, err := st.resp.Body.Read(buf)
		wire.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v after %q", err, wire.String())
		}
	}
	if strings.Contains(wire.String(), "\r") {
		t.Fatalf("chunk framing in an HTTP/1.0 body: %q", wire.String())
	}
}

// A drained stream gets a jittered retry: field and a clean end of its
// chunked body, so its client reconnects elsewhere, spread out.
func TestDrainEndsStreamsCleanly(t *testing.T) {
	t.Parallel()
	const retry = 1500 * time.Millisecond
	e := newTestEdge(t, sseedge.Config{DrainPeriod: 200 * time.Millisecond, Retry: retry})
	streams := make([]*rawStream, 3)
	for i := range streams {
		streams[i] = openRaw(t, e, tokenFor(t, freshUser("drained"), time.Hour))
	}
	stopped := make(chan error, 1)
	go func() { stopped <- e.srv.Stop() }()
	for i, st := range streams {
		var got time.Duration
		for {
			ev, err := st.dec.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("stream %d: %v, want a clean end", i, err)
			}
			got = max(got, ev.Retry)
		}
		if got < retry || got > 3*retry {
			t.Errorf("stream %d: retry %v, want %v to %v", i, got, retry, 3*retry)
		}
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if got := e.closed(sseedge.CloseServerDrain); got != float64(len(streams)) {
		t.Fatalf("server_drain = %v, want %d", got, len(streams))
	}
}

// Clients that stop reading block no writer: with more of them stalled
// than the edge has writers, a broadcast still reaches every other stream,
// long before the stalled ones are cut off (see TestSlowConsumer and
// TestSlowReader for the cut-off).
func TestStalledClientsBlockNoWriter(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 20 * time.Second})
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	big := []byte(strings.Repeat("s", 64<<10))
	for range runtime.GOMAXPROCS(0) + 2 {
		user := freshUser("stuck")
		openRawVia(t, small, e, tokenFor(t, user, time.Hour)) // never read again
		for range 32 {                                        // 2 MiB, far beyond the sockets' buffers
			e.publish(t, user, big)
		}
	}
	const n = 50
	streams := make([]*rawStream, n)
	for i := range streams {
		tok, _ := sseedge.IssueToken(secret, freshUser("moving"), time.Hour, time.Now(), "news")
		streams[i] = openRaw(t, e, tok+"&topic=news")
	}
	for round := range 3 {
		data := "round " + strconv.Itoa(round)
		e.broadcast(t, "news", data)
		for i, st := range streams {
			_ = st.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				ev, err := st.dec.Next()
				if err != nil {
					t.Fatalf("stream %d, %s: %v", i, data, err)
				}
				if ev.Data == data {
					break
				}
			}
		}
	}
	if got := e.closed(sseedge.CloseWriteTimeout); got != 0 {
		t.Fatalf("write_timeout = %v: the stalled client was cut off too soon", got)
	}
}
