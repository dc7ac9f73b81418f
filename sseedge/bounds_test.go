package sseedge_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// The tests here hold the edge to its bounds on what a client can make it
// hold before and around a stream: a request's body and answer
// (RequestTimeout), and TCP connections (MaxTCPConnsPerIP, MaxTCPConns).

// hangGuard is how long a test waits for the edge to cut a connection off
// before it calls the connection held: far past every bound it sets.
const hangGuard = 20 * time.Second

// dialFrom opens a TCP connection to e from the loopback address src
// (Linux routes all of 127/8 to loopback).
func dialFrom(t *testing.T, e *testEdge, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByEdge reports whether the edge closes c within hangGuard,
// whatever it writes before.
func closedByEdge(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(hangGuard))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// get sends a complete GET of path on c, reads the answer and returns its
// status, or 0 if the connection ended first.
func get(c net.Conn, r *bufio.Reader, path string) int {
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return 0
	}
	if resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp.StatusCode
}

// A request whose body never comes is cut off at RequestTimeout, wherever
// the edge waits for it: net/http discarding the body of a request answered
// without reading it (unauthenticated), and an ack reading it, over
// HTTP/1.1 and HTTP/2.
func TestStalledBodyCut(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{RequestTimeout: 300 * time.Millisecond})
	for _, path := range []string{"/v1/herald.js", "/v1/events", "/v1/ack"} {
		t.Run("HTTP/1.1 "+path, func(t *testing.T) {
			c := dialFrom(t, e, "127.0.0.1")
			method := "GET"
			if path == "/v1/ack" {
				method = "POST"
			}
			_, _ = io.WriteString(c, method+" "+path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
			if !closedByEdge(c) {
				t.Fatalf("a request with no body held its connection for %v", hangGuard)
			}
		})
	}
	t.Run("HTTP/1.1 authenticated ack", func(t *testing.T) {
		c := dialFrom(t, e, "127.0.0.1")
		_, _ = io.WriteString(c, "POST /v1/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+
			tokenFor(t, freshUser("stall"), time.Hour)+"\r\nContent-Length: 100\r\n\r\n")
		if !closedByEdge(c) {
			t.Fatalf("an ack with no body held its connection for %v", hangGuard)
		}
	})
	t.Run("HTTP/2 authenticated ack", func(t *testing.T) {
		protocols := new(http.Protocols)
		protocols.SetUnencryptedHTTP2(true)
		transport := &http.Transport{Protocols: protocols}
		t.Cleanup(transport.CloseIdleConnections)
		body, stall := io.Pipe()
		t.Cleanup(func() { stall.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/v1/ack", body)
		req.ContentLength = 100
		req.Header.Set("Authorization", "Bearer "+tokenFor(t, freshUser("stall"), time.Hour))
		resp, err := transport.RoundTrip(req)
		if err != nil {
			t.Fatalf("no answer to an ack with no body: %v", err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s %d, want HTTP/2 400 bad_body", resp.Proto, resp.StatusCode)
		}
	})
	stillServes(t, e)
}

// An ack waiting for its body holds a place among its client address's
// acks in flight (MaxConnsPerIP of them) and gives it back when it ends:
// another ack from the address is refused meanwhile. Acks are counted
// apart from streams: a stream from the address is admitted beside the
// stalled ack, and an address holding all its streams can still ack them.
func TestStalledAckCountsPerIP(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxConnsPerIP: 1, RequestTimeout: time.Minute})
	tok := tokenFor(t, freshUser("stall"), time.Hour)
	ack := func() int {
		req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/ack", strings.NewReader(`{"ids":["1"]}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		status, _ := request(t, req)
		return status
	}
	stall := func() net.Conn {
		c := dialFrom(t, e, "127.0.0.1")
		_, _ = io.WriteString(c, "POST /v1/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+"\r\nContent-Length: 100\r\n\r\n")
		return c
	}
	refused := func() float64 {
		return e.metric(`herald_sse_connections_refused_total{code="too_many_connections"}`)
	}
	c := stall()
	testenv.WaitFor(t, hangGuard, "the stalled ack to hold the address's ack place", func() bool {
		before := refused()
		if ack() == http.StatusTooManyRequests {
			return true
		}
		// A refusal while this polling ack held the place was the
		// stalled ack's (whose 429 net/http holds back until its body
		// comes): send it again.
		if refused() > before {
			c.Close()
			c = stall()
		}
		return false
	})
	status, code, closeStream := openStream(t, e, tokenFor(t, freshUser("beside"), time.Hour))
	if status != http.StatusOK {
		t.Fatalf("a stream beside the stalled ack: %d %q, want 200", status, code)
	}
	defer closeStream()
	c.Close()
	testenv.WaitFor(t, hangGuard, "an ack from the address holding its one stream", func() bool { return ack() == http.StatusOK })
}

// A stream is not cut by RequestTimeout: it is cleared once the stream is
// admitted. Each stream stays quiet for many timeouts, then gets an event:
// over HTTP/1.1 (taken over by the writers), HTTP/1.0 (served on its
// handler goroutine, with net/http reading the connection) and HTTP/2.
func TestStreamOutlivesRequestTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	e := newTestEdge(t, sseedge.Config{RequestTimeout: timeout, Heartbeat: time.Hour})
	readUntil := func(t *testing.T, r *bufio.Reader, want string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended before %q: %v", want, err)
			}
			if strings.Contains(line, want) {
				return
			}
		}
	}
	quietThenEvent := func(t *testing.T, user string, r *bufio.Reader) {
		t.Helper()
		readUntil(t, r, ": connected")
		time.Sleep(5 * timeout) // load can only make this pass
		e.publish(t, user, []byte("after-quiet"))
		readUntil(t, r, "after-quiet")
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			user := freshUser("quiet")
			c := dialFrom(t, e, "127.0.0.1")
			_ = c.SetDeadline(time.Now().Add(hangGuard))
			_, _ = io.WriteString(c, "GET /v1/events?access_token="+tokenFor(t, user, time.Hour)+" "+proto+"\r\nHost: x\r\n\r\n")
			r := bufio.NewReader(c)
			if line, _ := r.ReadString('\n'); !strings.Contains(line, " 200 ") {
				t.Fatalf("status line %q", line)
			}
			quietThenEvent(t, user, r)
		})
	}
	t.Run("HTTP/2", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		user := freshUser("quiet")
		quietThenEvent(t, user, openH2(t, ctx, e, tokenFor(t, user, time.Hour)))
	})
}

// A peer address holds at most MaxTCPConnsPerIP connections, idle ones
// included: one more is closed before anything is read from it, while
// another address is served; closing one gives its place back.
func TestTCPConnsPerIP(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxTCPConnsPerIP: 3})
	var held []net.Conn
	for range 3 {
		c := dialFrom(t, e, "127.0.0.1")
		if status := get(c, bufio.NewReader(c), "/v1/herald.js"); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
		held = append(held, c) // idle, kept alive
	}
	over := dialFrom(t, e, "127.0.0.1")
	if status := get(over, bufio.NewReader(over), "/v1/herald.js"); status != 0 {
		t.Fatalf("connection 4 of an address served (%d), want it closed", status)
	}
	if n := e.metric(`herald_sse_tcp_connections_refused_total{limit="per_ip"}`); n != 1 {
		t.Errorf("refused per_ip = %v, want 1", n)
	}
	other := dialFrom(t, e, "127.0.0.2")
	if status := get(other, bufio.NewReader(other), "/v1/herald.js"); status != http.StatusOK {
		t.Fatalf("another address: status %d, want 200", status)
	}
	held[0].Close()
	testenv.WaitFor(t, hangGuard, "the closed connection's place given back", func() bool {
		c := dialFrom(t, e, "127.0.0.1")
		defer c.Close()
		return get(c, bufio.NewReader(c), "/v1/herald.js") == http.StatusOK
	})
	for _, c := range append(held, other) {
		c.Close()
	}
	testenv.WaitFor(t, hangGuard, "no connection counted", func() bool { return e.metric("herald_sse_tcp_connections") == 0 })
}

// Streams' connections stay counted while the writers serve them (net/http
// reports no close for a connection taken over) and until they close, over
// HTTP/1.1 and HTTP/2, and every count returns to zero.
func TestTCPConnsCountStreams(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxTCPConnsPerIP: 2})
	var streams []net.Conn
	for range 2 {
		c := dialFrom(t, e, "127.0.0.1")
		if status := get(c, bufio.NewReader(c), "/v1/events?access_token="+tokenFor(t, freshUser("counted"), time.Hour)); status != http.StatusOK {
			t.Fatalf("stream: status %d", status)
		}
		streams = append(streams, c)
	}
	testenv.WaitFor(t, hangGuard, "the streams open", func() bool { return e.metric("herald_sse_connections_open") == 2 })
	over := dialFrom(t, e, "127.0.0.1")
	if status := get(over, bufio.NewReader(over), "/v1/herald.js"); status != 0 {
		t.Fatalf("a third connection beside two streams served (%d), want it closed", status)
	}
	for _, c := range streams {
		c.Close()
	}
	testenv.WaitFor(t, hangGuard, "the streams' connections given back", func() bool {
		return e.metric("herald_sse_connections_open") == 0 && e.metric("herald_sse_tcp_connections") == 0
	})

	// HTTP/2: two streams on one connection count once.
	ctx, cancel := context.WithCancel(context.Background())
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: protocols}
	for range 2 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, freshUser("h2"), time.Hour), nil)
		resp, err := transport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
			t.Fatalf("served %s %d", resp.Proto, resp.StatusCode)
		}
	}
	if n := e.metric("herald_sse_tcp_connections"); n != 1 {
		t.Errorf("%v TCP connections for two HTTP/2 streams on one, want 1", n)
	}
	cancel()
	testenv.WaitFor(t, hangGuard, "the HTTP/2 connection given back", func() bool {
		// Idle once the client has reset both streams.
		transport.CloseIdleConnections()
		return e.metric("herald_sse_connections_open") == 0 && e.metric("herald_sse_tcp_connections") == 0
	})
}

// Trusted proxies are exempt from MaxTCPConnsPerIP (each carries many
// clients) but not from MaxTCPConns: at the total, a new connection takes
// the place of an idle keep-alive connection, which is closed, a trusted
// proxy's like any other (evict_test.go has which one, and when none).
func TestTCPConnsTotal(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxTCPConnsPerIP: 1, MaxTCPConns: 3,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	var held []net.Conn
	var readers []*bufio.Reader
	for _, src := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2"} {
		c := dialFrom(t, e, src)
		r := bufio.NewReader(c)
		if status := get(c, r, "/v1/herald.js"); status != http.StatusOK {
			t.Fatalf("connection from %s: status %d, want 200", src, status)
		}
		held, readers = append(held, c), append(readers, r) // idle, kept alive
	}
	c := dialFrom(t, e, "127.0.0.3")
	if status := get(c, bufio.NewReader(c), "/v1/herald.js"); status != http.StatusOK {
		t.Fatalf("connection 4 of an edge limited to 3, beside idle ones: status %d, want 200", status)
	}
	served := 0
	for i, c := range held {
		if get(c, readers[i], "/v1/herald.js") == http.StatusOK {
			served++
		}
	}
	if served != 2 {
		t.Errorf("%d of the 3 idle connections still served, want 2: one evicted", served)
	}
	if n := e.metric("herald_sse_tcp_connections_evicted_total"); n != 1 {
		t.Errorf("evicted = %v, want 1", n)
	}
	if n := e.metric(`herald_sse_tcp_connections_refused_total{limit="total"}`); n != 0 {
		t.Errorf("refused total = %v, want 0", n)
	}
}

// A flood from one address at the default limits: 2000 connections, then
// on each a request whose body never comes. The edge holds at most
// MaxTCPConnsPerIP (1500 by default) of them, closes the rest at once, and
// cuts every one it holds at RequestTimeout.
func TestStalledFloodFromOneAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("4000 descriptors")
	}
	t.Parallel()
	// Headers may take a minute: none is cut while the flood is dialled.
	e := newTestEdge(t, sseedge.Config{RequestTimeout: time.Second, ReadHeaderTimeout: time.Minute})
	const n = 2000
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialFrom(t, e, "127.0.0.1")
	}
	testenv.WaitFor(t, hangGuard, "the connections over the limit refused", func() bool {
		return e.metric(`herald_sse_tcp_connections_refused_total{limit="per_ip"}`) == n-1500 &&
			e.metric("herald_sse_tcp_connections") == 1500
	})
	for _, c := range conns {
		_, _ = io.WriteString(c, "GET /v1/herald.js HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
	}
	testenv.WaitFor(t, hangGuard, "every stalled request cut", func() bool { return e.metric("herald_sse_tcp_connections") == 0 })
	stillServes(t, e)
}
