package sseedge_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// The tests here hold the edge to what it does at its total of TCP
// connections (MaxTCPConns): a new connection takes the place of the one
// that has waited longest holding no stream, and is refused only when every
// connection holds one.

// dialAccepted dials e from src and waits for the edge to count the
// connection as its nth, so that connections are accepted in the order
// they are dialled.
func dialAccepted(t *testing.T, e *testEdge, src string, n int) net.Conn {
	t.Helper()
	c := dialFrom(t, e, src)
	testenv.WaitFor(t, hangGuard, fmt.Sprintf("connection %d counted", n), func() bool {
		return e.metric("herald_sse_tcp_connections") == float64(n)
	})
	return c
}

// h2Idle opens an HTTP/2 connection from src that sends its preface and
// settings, and no stream; it returns once the edge has acknowledged the
// settings, and so has seen the connection go idle.
func h2Idle(t *testing.T, e *testEdge, src string) net.Conn {
	t.Helper()
	c := dialFrom(t, e, src)
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	defer c.SetDeadline(time.Time{})
	// The preface, then an empty SETTINGS frame.
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("no SETTINGS acknowledgement: %v", err)
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			t.Fatal(err)
		}
		if hdr[3] == 0x4 && hdr[4]&0x1 != 0 {
			return c
		}
	}
}

// streamOn asks for a stream for user on c, over proto (HTTP/1.1 or
// HTTP/1.0), and returns its events; it fails the test unless the stream
// opens.
func streamOn(t *testing.T, c net.Conn, proto, user string) *sseedge.Decoder {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	_, _ = io.WriteString(c, "GET /v1/events?access_token="+tokenFor(t, user, time.Hour)+" "+proto+"\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s stream: %v", proto, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s stream: status %d, want 200", proto, resp.StatusCode)
	}
	return sseedge.NewDecoder(resp.Body)
}

// Three addresses, each at its own limit, fill the edge's total with
// connections that send nothing, or only an HTTP/2 preface: a new client's
// stream is admitted all the same, in the place of the one accepted first,
// which is closed.
func TestTCPConnsEvictForNewClient(t *testing.T) {
	t.Parallel()
	// Silent connections are not cut while the test runs.
	e := newTestEdge(t, sseedge.Config{MaxTCPConnsPerIP: 2, MaxTCPConns: 6, ReadHeaderTimeout: time.Minute})
	h2 := h2Idle(t, e, "127.0.0.11")
	silent := []net.Conn{h2}
	for i := 1; i < 6; i++ {
		silent = append(silent, dialAccepted(t, e, fmt.Sprintf("127.0.0.%d", 11+i/2), i+1))
	}
	c := dialFrom(t, e, "127.0.0.20")
	user := freshUser("evicting")
	dec := streamOn(t, c, "HTTP/1.1", user)
	if !closedByEdge(h2) {
		t.Fatalf("the connection accepted first held for %v", hangGuard)
	}
	id := e.publish(t, user, []byte("admitted"))
	readUntil(t, dec, id)
	if n := e.metric("herald_sse_tcp_connections_evicted_total"); n != 1 {
		t.Errorf("evicted = %v, want 1", n)
	}
	if n := e.metric(`herald_sse_tcp_connections_refused_total{limit="total"}`); n != 0 {
		t.Errorf("refused total = %v, want 0", n)
	}
	if n := e.metric("herald_sse_tcp_connections"); n != 6 {
		t.Errorf("%v connections counted, want 6", n)
	}
}

// A flood of connections that send nothing, at the edge's total, never
// evicts a connection holding a stream: over HTTP/1.1 (taken over by the
// writers), HTTP/1.0 and HTTP/2 (served on their handler goroutines), each
// gets an event after it. Once streams hold every place, a new connection
// is refused.
func TestTCPConnsFloodKeepsStreams(t *testing.T) {
	t.Parallel()
	const total, flood = 5, 20
	e := newTestEdge(t, sseedge.Config{MaxTCPConns: total, ReadHeaderTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	users := []string{freshUser("flood11"), freshUser("flood10"), freshUser("flood2")}
	decs := []*sseedge.Decoder{
		streamOn(t, dialFrom(t, e, "127.0.0.1"), "HTTP/1.1", users[0]),
		streamOn(t, dialFrom(t, e, "127.0.0.1"), "HTTP/1.0", users[1]),
		sseedge.NewDecoder(openH2(t, ctx, e, tokenFor(t, users[2], time.Hour))),
	}
	for i := range flood {
		dialFrom(t, e, fmt.Sprintf("127.0.0.%d", 30+i%4))
	}
	testenv.WaitFor(t, hangGuard, "the flood evicting all but the newest", func() bool {
		return e.metric("herald_sse_tcp_connections_evicted_total") == float64(flood-(total-len(decs)))
	})
	for i, user := range users {
		id := e.publish(t, user, []byte("after the flood"))
		readUntil(t, decs[i], id)
	}

	// Two more streams take the last places; then there is none.
	for range total - len(decs) {
		streamOn(t, dialFrom(t, e, "127.0.0.2"), "HTTP/1.1", freshUser("last"))
	}
	over := dialFrom(t, e, "127.0.0.3")
	if !closedByEdge(over) {
		t.Fatalf("a connection beside %d streams held for %v", total, hangGuard)
	}
	if n := e.metric(`herald_sse_tcp_connections_refused_total{limit="total"}`); n != 1 {
		t.Errorf("refused total = %v, want 1", n)
	}
	if n := e.metric("herald_sse_tcp_connections_evicted_total"); n != flood {
		t.Errorf("evicted = %v, want %d", n, flood)
	}
}
