package sseedge

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
)

// idleServer serves h on HTTP/1.1 and h2c with idleConns' timeout, and
// counts the connections it has closed.
type idleServer struct {
	addr   string
	mu     sync.Mutex
	closed int
}

func newIdleServer(t *testing.T, timeout time.Duration, h http.HandlerFunc) *idleServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &idleServer{addr: lis.Addr().String()}
	idle := newIdleConns(timeout)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: h, Protocols: protocols, ConnState: func(c net.Conn, state http.ConnState) {
		idle.connState(c, state)
		if state == http.StateClosed {
			s.mu.Lock()
			s.closed++
			s.mu.Unlock()
		}
	}}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { _ = hs.Close() })
	return s
}

func (s *idleServer) closedConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// idleConns closes an HTTP/1.1 connection between requests, and an HTTP/2
// one with no stream open, once idle for its timeout; never one that
// carries a request, however long.
func TestIdleConnsCloseIdleOnly(t *testing.T) {
	t.Parallel()
	const timeout = 50 * time.Millisecond
	for _, proto := range []string{"HTTP/1.1", "HTTP/2.0"} {
		t.Run(proto, func(t *testing.T) {
			// A server of its own: the other's held connection closes
			// when its test ends.
			s := newIdleServer(t, timeout, func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("ok\n"))
				w.(http.Flusher).Flush()
				if r.URL.Path == "/hold" {
					<-r.Context().Done()
				}
			})
			protocols := new(http.Protocols)
			if proto == "HTTP/2.0" {
				protocols.SetUnencryptedHTTP2(true)
			} else {
				protocols.SetHTTP1(true)
			}
			// get asks for path on a connection of its own.
			get := func(ctx context.Context, path string) {
				t.Helper()
				transport := &http.Transport{Protocols: protocols}
				t.Cleanup(transport.CloseIdleConnections)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+path, nil)
				resp, err := transport.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { resp.Body.Close() })
				if resp.Proto != proto {
					t.Fatalf("served %s", resp.Proto)
				}
				if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "ok\n" {
					t.Fatalf("read %q, %v", line, err)
				}
			}
			closed := 0
			waitClosed := func() {
				t.Helper()
				closed++
				testenv.WaitFor(t, 10*time.Second, "the idle connection closed", func() bool { return s.closedConns() == closed })
			}

			// A keep-alive connection between requests.
			get(context.Background(), "/quick")
			waitClosed()
			// A request held open for many timeouts keeps its
			// connection: load can only make this pass.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			get(ctx, "/hold")
			time.Sleep(20 * timeout)
			if n := s.closedConns() - closed; n != 0 {
				t.Fatalf("%d connections closed while a request was open", n)
			}
			if proto == "HTTP/2.0" {
				// The stream reset, its connection is idle.
				cancel()
				waitClosed()
			}
		})
	}
}
