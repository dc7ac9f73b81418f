package testenv

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Server is a component serving on a listener of its own in the background.
type Server struct {
	Addr   string // host:port it listens on
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// Serve runs serve on a fresh 127.0.0.1 listener until the test ends, when
// it cancels serve's context, waits for it to return and fails the test if
// it returned an error.
func Serve(tb testing.TB, serve func(ctx context.Context, lis net.Listener) error) *Server {
	tb.Helper()
	return ServeOn(tb, "127.0.0.1:0", serve)
}

// ServeOn is Serve on a given address, for a component restarted on the
// address it had.
func ServeOn(tb testing.TB, addr string, serve func(ctx context.Context, lis net.Listener) error) *Server {
	tb.Helper()
	var lis net.Listener
	var err error
	// A just-closed listener's port may take a moment to be free again.
	WaitFor(tb, 5*time.Second, "listening on "+addr, func() bool {
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Addr: lis.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- serve(ctx, lis) }()
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("serving on %s: %v", s.Addr, err)
		}
	})
	return s
}

// Stop cancels the server's context, as SIGTERM would, and waits for it to
// return. It is idempotent.
func (s *Server) Stop() error {
	s.once.Do(func() {
		s.cancel()
		s.err = <-s.done
	})
	return s.err
}

// GRPCClient dials addr without TLS, closing the connection at cleanup.
func GRPCClient(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}
