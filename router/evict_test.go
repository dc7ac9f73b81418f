package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// oneDialClient is a client from the local address from that dials only
// once: after its connection is closed its calls fail UNAVAILABLE instead
// of reconnecting, so a call that succeeds was served on its first
// connection.
func oneDialClient(tb testing.TB, addr, from string) *grpc.ClientConn {
	tb.Helper()
	var dialed atomic.Bool
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			if dialed.Swap(true) {
				return nil, errors.New("test client: dials once")
			}
			return d.DialContext(ctx, "tcp", a)
		}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// notifyOn makes a Notify with key ("" for none) on conn.
func notifyOn(conn *grpc.ClientConn, key string) error {
	ctx := context.Background()
	if key != "" {
		ctx = withKey(key)
	}
	// A hang guard: served, the call takes milliseconds.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := heraldv1.NewRouterServiceClient(conn).Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")})
	return err
}

// silentFrom opens a connection from the local address from that sends
// nothing, and reads the router's first bytes (its SETTINGS, written as
// gRPC takes the connection): the router holds it, within its handshake
// timeout.
func silentFrom(tb testing.TB, addr, from string) net.Conn {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang guard
	if _, err := c.Read(make([]byte, 1)); err != nil {
		tb.Fatalf("silent connection from %s: %v; want the router to take it", from, err)
	}
	return c
}

// closedByRouter reports whether the router closed c (within a hang guard
// of 30 s).
func closedByRouter(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, c)
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// connsRefused is herald_router_conns_refused_total{limit}.
func connsRefused(tb testing.TB, reg prometheus.Gatherer, limit string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "herald_router_conns_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == limit {
				return m.GetCounter().GetValue()
			}
		}
	}
	tb.Fatalf("herald_router_conns_refused_total{limit=%q} is not registered", limit)
	return 0
}

var svcCaller = []router.CallerConfig{{Name: "svc", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}}

// TestUnauthenticatedConnsDoNotLockOut: four addresses, each at its share
// of connections, fill the router's total without credentials: two
// connections that make health checks, then six silent ones. A caller's
// connection is still served, and each new one closes the oldest
// connection that has carried no authenticated call, health checks not
// counting as one, and is counted in herald_router_conns_evicted_total.
// Before, the callers' connections waited in the listen queue until a
// silent one closed (here: never within the test).
func TestUnauthenticatedConnsDoNotLockOut(t *testing.T) {
	r := newAuthRouterConfig(t, router.Config{MaxConns: 8, MaxConnsPerIP: 2, HandshakeTimeout: 5 * time.Minute},
		router.AuthConfig{Callers: svcCaller})
	checkers := []*grpc.ClientConn{oneDialClient(t, r.addr, "127.0.0.2"), oneDialClient(t, r.addr, "127.0.0.2")}
	for i, c := range checkers {
		if err := check(c); err != nil {
			t.Fatalf("health check %d: %v", i+1, err)
		}
	}
	var silent []net.Conn
	for _, from := range []string{"127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4", "127.0.0.5", "127.0.0.5"} {
		silent = append(silent, silentFrom(t, r.addr, from))
	}

	for i, from := range []string{"127.0.0.6", "127.0.0.7"} {
		if err := notifyOn(oneDialClient(t, r.addr, from), "k1"); err != nil {
			t.Fatalf("Notify from %s with the total held by connections without credentials: %v", from, err)
		}
		if err := check(checkers[i]); status.Code(err) != codes.Unavailable {
			t.Errorf("health check %d's connection after caller %d connected: %v, want it closed (Unavailable)", i+1, i+1, err)
		}
	}
	if err := notifyOn(oneDialClient(t, r.addr, "127.0.0.8"), "k1"); err != nil {
		t.Fatalf("Notify from 127.0.0.8: %v", err)
	}
	if !closedByRouter(silent[0]) {
		t.Error("the oldest silent connection is still open after three callers connected, want it closed")
	}
	if n := testenv.Counter(t, r.metrics, "herald_router_conns_evicted_total"); n != 3 {
		t.Errorf("herald_router_conns_evicted_total = %v, want 3", n)
	}
}

// TestAuthenticatedConnOutlivesFlood: once a connection has carried an
// authenticated call, new connections without credentials, many times the
// router's total, close one another and never it: the caller's next call
// is served on it.
func TestAuthenticatedConnOutlivesFlood(t *testing.T) {
	const total, flood = 4, 12
	r := newAuthRouterConfig(t, router.Config{MaxConns: total, MaxConnsPerIP: 2, HandshakeTimeout: 5 * time.Minute},
		router.AuthConfig{Callers: svcCaller})
	caller := oneDialClient(t, r.addr, "127.0.0.1")
	if err := notifyOn(caller, "k1"); err != nil {
		t.Fatal(err)
	}
	for i := range flood {
		silentFrom(t, r.addr, fmt.Sprintf("127.0.0.%d", 2+i/2))
	}
	if err := notifyOn(caller, "k1"); err != nil {
		t.Fatalf("Notify on the caller's connection after %d connections without credentials: %v", flood, err)
	}
	if n, want := testenv.Counter(t, r.metrics, "herald_router_conns_evicted_total"), float64(flood-(total-1)); n != want {
		t.Errorf("herald_router_conns_evicted_total = %v, want %v", n, want)
	}
}

// TestConnsFullOfCallers: when every connection the router holds has
// carried an authenticated call, a new connection is closed as it is
// accepted, counted in herald_router_conns_refused_total{limit="total"},
// and the callers' connections go on serving; a call that failed
// authentication does not count as an authenticated one.
func TestConnsFullOfCallers(t *testing.T) {
	r := newAuthRouterConfig(t, router.Config{MaxConns: 2, MaxConnsPerIP: -1}, router.AuthConfig{Callers: svcCaller})
	a, b := oneDialClient(t, r.addr, "127.0.0.2"), oneDialClient(t, r.addr, "127.0.0.3")
	for _, c := range []*grpc.ClientConn{a, b} {
		if err := notifyOn(c, "k1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := check(oneDialClient(t, r.addr, "127.0.0.4")); status.Code(err) != codes.Unavailable {
		t.Fatalf("health check on a third connection: %v, want Unavailable (closed by the router)", err)
	}
	if err := notifyOn(oneDialClient(t, r.addr, "127.0.0.5"), "wrong"); status.Code(err) != codes.Unavailable {
		t.Fatalf("Notify with a wrong key on a fourth connection: %v, want Unavailable (closed by the router)", err)
	}
	for _, c := range []*grpc.ClientConn{a, b} {
		if err := notifyOn(c, "k1"); err != nil {
			t.Fatalf("Notify on a caller's connection after the refusals: %v", err)
		}
	}
	if n := connsRefused(t, r.metrics, "total"); n != 2 {
		t.Errorf(`herald_router_conns_refused_total{limit="total"} = %v, want 2`, n)
	}
	if n := connsRefused(t, r.metrics, "per_ip"); n != 0 {
		t.Errorf(`herald_router_conns_refused_total{limit="per_ip"} = %v, want 0`, n)
	}
	if n := testenv.Counter(t, r.metrics, "herald_router_conns_evicted_total"); n != 0 {
		t.Errorf("herald_router_conns_evicted_total = %v, want 0", n)
	}
}

// TestNoAuthCallsCount: a router served without credentials (NoAuth)
// counts every call but Health/Check as authenticated: a connection that
// made a Notify is not evicted, one that made only a health check is.
func TestNoAuthCallsCount(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	svc, err := router.New(router.Config{MaxConns: 2, MaxConnsPerIP: -1}, router.Deps{Publisher: pub, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis, router.NoAuth()) })
	caller, checker := oneDialClient(t, srv.Addr, "127.0.0.2"), oneDialClient(t, srv.Addr, "127.0.0.3")
	if err := notifyOn(caller, ""); err != nil {
		t.Fatal(err)
	}
	if err := check(checker); err != nil {
		t.Fatal(err)
	}
	if err := notifyOn(oneDialClient(t, srv.Addr, "127.0.0.4"), ""); err != nil {
		t.Fatalf("Notify on a third connection: %v", err)
	}
	if err := check(checker); status.Code(err) != codes.Unavailable {
		t.Errorf("health check after a third connection: %v, want its connection closed (Unavailable)", err)
	}
	if err := notifyOn(caller, ""); err != nil {
		t.Errorf("Notify on the first caller's connection after a third connection: %v", err)
	}
}
