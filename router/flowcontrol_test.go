package router_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// pingCounter reads one direction of an HTTP/2 connection and counts the
// PING frames that are not answers (no ACK flag).
type pingCounter struct {
	mu    sync.Mutex
	skip  int // bytes of the client preface still to skip
	buf   []byte
	pings int
}

func (c *pingCounter) add(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.skip > 0 {
		n := min(c.skip, len(p))
		c.skip -= n
		p = p[n:]
	}
	c.buf = append(c.buf, p...)
	for len(c.buf) >= 9 {
		size := int(c.buf[0])<<16 | int(binary.BigEndian.Uint16(c.buf[1:3]))
		if len(c.buf) < 9+size {
			return
		}
		const typePing, flagAck = 0x6, 0x1
		if c.buf[3] == typePing && c.buf[4]&flagAck == 0 {
			c.pings++
		}
		c.buf = c.buf[9+size:]
	}
}

func (c *pingCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pings
}

// countingConn counts the PINGs the client sends (sent) and those the
// server sends (received).
type countingConn struct {
	net.Conn
	sent, received *pingCounter
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.sent.add(p)
	return c.Conn.Write(p)
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.received.add(p[:n])
	return n, err
}

// A caller that dials with DialOptions, making one call at a time, has no
// PING on its connection either way: neither end runs gRPC's bandwidth
// estimator, which otherwise pings after each quiet spell, so that every
// call at a low rate cost the router a PING to read and one to send.
func TestNoFlowControlPings(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	svc, err := router.New(router.Config{MaxPayloadBytes: 1024}, router.Deps{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	user := "u-flow"
	ps := testenv.Online(t, rdb, reg, user)
	sent := &pingCounter{skip: len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")}
	received := &pingCounter{}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, sent: sent, received: received}, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr, append(router.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := heraldv1.NewRouterServiceClient(conn)
	for i := range 5 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: user, Event: "e", Data: []byte(`{"n":1}`)})
		cancel()
		if err != nil {
			t.Fatalf("Notify %d: %v", i, err)
		}
		receiveData(t, ps)
	}
	if n := sent.count(); n != 0 {
		t.Errorf("the client sent %d PINGs, want none", n)
	}
	if n := received.count(); n != 0 {
		t.Errorf("the router sent %d PINGs, want none", n)
	}
}
