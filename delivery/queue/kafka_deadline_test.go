package queue_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery/queue"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// newTestSilentBroker is a TCP listener on :0 that accepts connections and
// never answers, as a hung broker does. It closes them at cleanup.
func newTestSilentBroker(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestEnqueueBoundedByCallTimeout: a router's write to a broker that
// accepts the connection and never answers ends with an error within the
// queue's CallTimeout, though its caller's context has no deadline.
func TestEnqueueBoundedByCallTimeout(t *testing.T) {
	t.Parallel()
	q, err := queue.NewKafka(queue.Config{Brokers: []string{newTestSilentBroker(t)},
		CallTimeout: 300 * time.Millisecond}, queue.DefaultOfflineTopic)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- q.Enqueue(context.Background(), &heraldv1.Envelope{Id: "n1", UserId: "u"})
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Enqueue to a silent broker succeeded")
		}
		t.Logf("Enqueue: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("Enqueue to a silent broker still waiting after 15s: the write has no deadline")
	}
	// Close waits for the writer's own attempts, each bounded by WriteTimeout.
	if err := q.Close(); err != nil {
		t.Logf("close: %v", err)
	}
}

// TestWriterTimeouts: the writers the binaries build bound every request,
// and their write calls get a deadline from the config.
func TestWriterTimeouts(t *testing.T) {
	t.Parallel()
	w, err := queue.NewWriter(queue.Config{Brokers: []string{"127.0.0.1:1"}}, "t")
	if err != nil {
		t.Fatal(err)
	}
	if w.WriteTimeout <= 0 || w.ReadTimeout <= 0 || w.MaxAttempts <= 0 {
		t.Fatalf("writer WriteTimeout %v, ReadTimeout %v, MaxAttempts %d: want all positive", w.WriteTimeout, w.ReadTimeout, w.MaxAttempts)
	}
	if w.Transport != nil {
		t.Fatalf("writer transport %T: want kafka-go's default, whose dial times out at 3s", w.Transport)
	}
	ctx, cancel := queue.Config{Brokers: []string{"b"}}.WriteContext(context.Background())
	defer cancel()
	d, ok := ctx.Deadline()
	if !ok || time.Until(d) <= 0 || time.Until(d) > time.Minute {
		t.Fatalf("WriteContext deadline %v (set %v): want one within a minute", d, ok)
	}
}
