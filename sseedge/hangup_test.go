package sseedge_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// edgeSockets counts the sockets the edge at addr holds open for its
// clients, from /proc/net/tcp: those on its address, not listening, that
// still have a file (a closed one in TIME_WAIT has none). The address, not
// the port alone: a socket of another process, bound to another loopback
// address (heraldbench's fleets bind 127.0.0.x), may have the same port.
func edgeSockets(tb testing.TB, addr string) int {
	tb.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		tb.Fatalf("edge address %q: want an IPv4 address and port", addr)
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	// An IPv4 address is printed as the 32-bit word in host order:
	// byte-reversed on little-endian machines.
	ip := ap.Addr().As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		if len(fields) < 10 || fields[1] != local || fields[3] == "0A" || fields[9] == "0" {
			continue
		}
		n++
	}
	return n
}

// Clients that hang up in every way (closing, resetting, half-closing, and
// resetting while the edge waits for their full socket), while events flow,
// are each counted once as client_closed, and leave no socket, goroutine
// or open stream behind. It counts the process's goroutines, so it does
// not run in parallel.
func TestHangUpsFreeEverything(t *testing.T) {
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 30 * time.Second})
	addr := strings.TrimPrefix(e.url, "http://")
	const each = 20
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	open := func(d *net.Dialer) *rawStream {
		tok, _ := sseedge.IssueToken(secret, freshUser("hangup"), time.Hour, time.Now(), "flow")
		return openRawVia(t, d, e, tok+"&topic=flow")
	}
	// A first stream is served once the edge runs all its goroutines.
	open(&net.Dialer{}).conn.Close()
	waitClosed(t, e, sseedge.CloseClientClosed, 1)
	before := runtime.NumGoroutine()
	var closing, resetting, halving, stalled []*rawStream
	for range each {
		closing = append(closing, open(&net.Dialer{}))
		resetting = append(resetting, open(&net.Dialer{}))
		halving = append(halving, open(&net.Dialer{}))
		stalled = append(stalled, open(small))
	}
	// The stalled clients' sockets fill: their streams wait on them.
	big := strings.Repeat("f", 64<<10)
	for range 16 {
		e.broadcast(t, "flow", big)
	}
	for i := range each {
		closing[i].conn.Close()
		_ = resetting[i].conn.(*net.TCPConn).SetLinger(0)
		resetting[i].conn.Close()
		_ = halving[i].conn.(*net.TCPConn).CloseWrite()
		_ = stalled[i].conn.(*net.TCPConn).SetLinger(0)
		stalled[i].conn.Close()
		e.broadcast(t, "flow", "tick")
	}
	waitClosed(t, e, sseedge.CloseClientClosed, 1+4*each)
	for _, r := range []sseedge.CloseReason{sseedge.CloseWriteError, sseedge.CloseWriteTimeout, sseedge.CloseSlowConsumer} {
		if got := e.closed(r); got > 0 {
			t.Errorf("%s = %v, want 0", r, got)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "every stream to end", func() bool { return e.openConns() == 0 })
	testenv.WaitFor(t, 5*time.Second, "every socket closed", func() bool { return edgeSockets(t, addr) == 0 })
	testenv.WaitFor(t, 5*time.Second, "the goroutines to end", func() bool {
		return runtime.NumGoroutine() <= before+2
	})
}

// Stop returns while clients stall on full sockets, and every stream, the
// stalled ones too, is counted once as server_drain, its socket closed.
func TestDrainWithStalledClients(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 300 * time.Millisecond})
	addr := strings.TrimPrefix(e.url, "http://")
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	const each = 5
	var moving []*rawStream
	for range each {
		tok, _ := sseedge.IssueToken(secret, freshUser("drainstall"), time.Hour, time.Now(), "stall")
		openRawVia(t, small, e, tok+"&topic=stall") // never read again
		moving = append(moving, openRaw(t, e, tokenFor(t, freshUser("drainmove"), time.Hour)))
	}
	// Enough to fill the stalled sockets, not enough to time their writes
	// out before the drain.
	e.broadcast(t, "stall", strings.Repeat("s", 256<<10))
	if err := e.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i, st := range moving {
		streamDrained(t, i, st)
	}
	if got := e.closed(sseedge.CloseServerDrain); got != 2*each {
		t.Errorf("server_drain = %v, want %d", got, 2*each)
	}
	if got := e.openConns(); got != 0 {
		t.Errorf("connections_open = %v after Stop", got)
	}
	if n := edgeSockets(t, addr); n != 0 {
		t.Errorf("%d sockets open after Stop", n)
	}
}

// streamDrained reads st to its end, which must be clean.
func streamDrained(t *testing.T, i int, st *rawStream) {
	t.Helper()
	_ = st.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, err := st.dec.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("stream %d: %v, want a clean end", i, err)
		}
	}
}
