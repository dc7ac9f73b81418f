//go:build linux

package sseedge

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// An idle taken-over stream holds its bare socket: no net.Conn, no wake
// channel, no file; and it is still written to through it.
func TestTakenOverStreamHoldsBareSocket(t *testing.T) {
	// 384 bytes is a size class of Go's allocator: a stream one byte larger
	// costs 416.
	if n := unsafe.Sizeof(stream{}); n > 384 {
		t.Errorf("a stream is %d bytes, over the 384 of its size class", n)
	}
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	s, err := New(Config{JWTSecret: []byte("k"), DrainPeriod: 10 * time.Millisecond}, Deps{Redis: rdb, Presence: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, s.Serve)
	conn, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tok, _ := IssueToken([]byte("k"), "iapetus", time.Hour, time.Now())
	if _, err := io.WriteString(conn, "GET /v1/events?access_token="+tok+" HTTP/1.1\r\nHost: edge\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("open: %v %v", resp, err)
	}
	var st *stream
	testenv.WaitFor(t, 5*time.Second, "the stream to be taken over and idle", func() bool {
		for _, c := range s.currentHub().all() {
			c.mu.Lock()
			if c.out != nil && !c.busy {
				st = c
			}
			c.mu.Unlock()
		}
		return st != nil
	})
	st.mu.Lock()
	w, wake, file := st.out, st.wake, st.out.file
	st.mu.Unlock()
	if wake != nil || file != nil {
		t.Errorf("an idle taken-over stream holds wake %v, file %v", wake != nil, file != nil)
	}
	sa, err := unix.Getpeername(w.fd)
	if err != nil {
		t.Fatalf("the stream's socket: %v", err)
	}
	if peer := sa.(*unix.SockaddrInet4); peer.Port != conn.LocalAddr().(*net.TCPAddr).Port {
		t.Fatalf("the stream's socket is connected to port %d, not the client's %s", peer.Port, conn.LocalAddr())
	}

	now := time.Now()
	env := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: "iapetus", Data: []byte("bare"), AcceptedAt: timestamppb.New(now)}
	if _, err := pub.Publish(context.Background(), env, ""); err != nil {
		t.Fatal(err)
	}
	dec := NewDecoder(resp.Body)
	for {
		ev, err := dec.Next()
		if err != nil {
			t.Fatalf("no event: %v", err)
		}
		if ev.Data == "bare" {
			return
		}
	}
}
