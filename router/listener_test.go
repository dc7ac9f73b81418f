package router_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/router"
)

// clientFrom dials addr from the local address from (Linux routes all of
// 127.0.0.0/8 to the loopback), as a client on another host would.
func clientFrom(tb testing.TB, addr, from string) *grpc.ClientConn {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// check makes a health check, which needs no credentials, failing fast
// when the connection fails.
func check(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestConnsPerIP: one address holds at most MaxConnsPerIP connections; the
// next from it is closed as it is accepted, while other addresses are
// served, and the address is served again once one of its connections
// closes. Before the bound, one address could take every connection slot
// without credentials.
func TestConnsPerIP(t *testing.T) {
	r := newAuthRouterConfig(t, router.Config{MaxConnsPerIP: 2}, router.AuthConfig{})
	first := clientFrom(t, r.addr, "127.0.0.2")
	if err := check(first); err != nil {
		t.Fatalf("connection 1 from 127.0.0.2: %v", err)
	}
	second := clientFrom(t, r.addr, "127.0.0.2")
	if err := check(second); err != nil {
		t.Fatalf("connection 2 from 127.0.0.2: %v", err)
	}
	third := clientFrom(t, r.addr, "127.0.0.2")
	if err := check(third); status.Code(err) != codes.Unavailable {
		t.Fatalf("connection 3 from 127.0.0.2: %v, want Unavailable (closed by the router)", err)
	}
	if err := check(clientFrom(t, r.addr, "127.0.0.3")); err != nil {
		t.Fatalf("connection from 127.0.0.3 while 127.0.0.2 holds its limit: %v", err)
	}
	if err := check(first); err != nil {
		t.Fatalf("connection 1 from 127.0.0.2 after the refusal: %v", err)
	}
	if n := connsRefused(t, r.metrics, "per_ip"); n < 1 {
		t.Errorf(`herald_router_conns_refused_total{limit="per_ip"} = %v, want at least 1`, n)
	}
	// Closing one connection gives the address its slot back.
	second.Close()
	testenv.WaitFor(t, 10*time.Second, "127.0.0.2 to be served again", func() bool { return check(third) == nil })
}

// TestHandshakeTimeout: a connection that sends nothing is closed after
// HandshakeTimeout (grpc-go's default kept it 120 s, during which it held
// a connection slot).
func TestHandshakeTimeout(t *testing.T) {
	r := newAuthRouterConfig(t, router.Config{HandshakeTimeout: 200 * time.Millisecond}, router.AuthConfig{})
	silent, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A hang guard, far beyond the timeout and far below grpc-go's 120 s.
	_ = silent.SetReadDeadline(time.Now().Add(60 * time.Second))
	// The router writes its SETTINGS first, then closes the connection.
	n, err := io.Copy(io.Discard, silent)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a silent connection is still open after 60s, want it closed after the 200ms handshake timeout")
	}
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("silent connection: read %d bytes, %v; want it closed", n, err)
	}
	// A client that completes the handshake is served.
	if err := check(clientFrom(t, r.addr, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
}
