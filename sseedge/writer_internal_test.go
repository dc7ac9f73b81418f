package sseedge

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

func TestChunk(t *testing.T) {
	for _, data := range []string{"x", ": hb\n\n", strings.Repeat("d", 4095), strings.Repeat("e", 1<<20)} {
		b := chunk(append(make([]byte, chunkRoom), data...))
		got, err := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(string(b) + "0\r\n\r\n")))
		if err != nil || string(got) != data {
			t.Fatalf("%d bytes: read back %d bytes, %v", len(data), len(got), err)
		}
	}
}

// A taken-over stream that the hub asks to resync catches up from history:
// here with what was published while it read no channel.
func TestResyncTakenOverStream(t *testing.T) {
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
	tok, _ := IssueToken([]byte("k"), "rhea", time.Hour, time.Now())
	if _, err := io.WriteString(conn, "GET /v1/events?access_token="+tok+" HTTP/1.1\r\nHost: edge\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("open: %v %v", resp, err)
	}
	var st *stream
	testenv.WaitFor(t, 5*time.Second, "the stream to be taken over", func() bool {
		for _, c := range s.currentHub().all() {
			c.mu.Lock()
			if c.out != nil {
				st = c
			}
			c.mu.Unlock()
		}
		return st != nil
	})

	// Off the channel, the stream misses the event live.
	s.currentHub().leave(context.Background(), st)
	now := time.Now()
	env := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: "rhea", Data: []byte("missed"), AcceptedAt: timestamppb.New(now)}
	if _, err := pub.Publish(context.Background(), env, ""); err != nil {
		t.Fatal(err)
	}
	st.signalResync()
	dec := NewDecoder(resp.Body)
	for {
		ev, err := dec.Next()
		if err != nil {
			t.Fatalf("no catch-up: %v", err)
		}
		if ev.Data == "missed" {
			return
		}
	}
}
