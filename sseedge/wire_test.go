package sseedge_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// A client that reads slowly, through a small receive buffer, gets every
// byte of every event once and in order, framed as the chunked coding and
// SSE require: writes that fill the socket, are finished by a goroutine of
// their own and are interleaved with heartbeats lose, repeat and split
// nothing.
func TestSlowReaderGetsEveryByte(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{Heartbeat: 5 * time.Millisecond, QueueSize: 4096, WriteTimeout: 30 * time.Second})
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	user := freshUser("trickle")
	st := openRawVia(t, small, e, tokenFor(t, user, time.Hour))

	const n = 120
	want := make([]string, n)
	for i := range want {
		size := 1 + (i*7919)%(96<<10)
		want[i] = fmt.Sprintf("%d:", i) + strings.Repeat(string(rune('a'+i%26)), size)
	}
	// The reader is slow: 1 KiB at a time, with pauses, so that the edge
	// meets a full socket again and again. Every ten events the publisher
	// waits for the reader to catch up, and pauses beyond the heartbeat
	// interval, so that heartbeats fall between the events.
	slow := &slowReader{r: st.resp.Body}
	var wire bytes.Buffer
	dec := sseedge.NewDecoder(io.TeeReader(slow, &wire))
	_ = st.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	done := make(chan error, 1)
	var read atomic.Int64
	go func() {
		for i := range want {
			ev, err := dec.Next()
			for err == nil && ev.Data == "" {
				ev, err = dec.Next() // a retry: field
			}
			if err != nil {
				done <- fmt.Errorf("event %d: %w", i, err)
				return
			}
			if ev.Data != want[i] {
				done <- fmt.Errorf("event %d: got %d bytes starting %.20q, want %d bytes starting %.20q", i, len(ev.Data), ev.Data, len(want[i]), want[i])
				return
			}
			read.Add(1)
		}
		done <- nil
	}()
	for i := range want {
		e.publish(t, user, []byte(want[i]))
		if i%10 == 9 {
			testenv.WaitFor(t, 30*time.Second, "the reader to catch up", func() bool {
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
					done <- nil // every event was read
				default:
				}
				return read.Load() > int64(i)
			})
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A heartbeat comes only between events.
	body := wire.String()
	for i := strings.Index(body, ": hb\n\n"); i >= 0; {
		if i > 0 && !strings.HasSuffix(body[:i], "\n\n") {
			t.Fatalf("a heartbeat inside an event: %q", body[max(0, i-40):i+6])
		}
		j := strings.Index(body[i+1:], ": hb\n\n")
		if j < 0 {
			break
		}
		i += 1 + j
	}
	if !strings.Contains(body, ": hb\n\n") {
		t.Fatal("no heartbeat between the events; the test did not test them")
	}
}

// slowReader reads at most 1 KiB at a time, and pauses after every 16 KiB.
type slowReader struct {
	r    io.Reader
	read int
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), 1024)])
	if s.read/(16<<10) != (s.read+n)/(16<<10) {
		time.Sleep(time.Millisecond)
	}
	s.read += n
	return n, err
}
