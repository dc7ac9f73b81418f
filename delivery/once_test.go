package delivery_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestScriptsRunOnceOnStalledRedis: go-redis sends a command again after a
// read timeout, and a Redis that was only stalled runs every copy once it
// goes on. A notify or broadcast script is sent once: the call fails with
// the timeout (the router answers UNAVAILABLE, and the caller retries with
// its idempotency key), and the history holds each event once, not once a
// try. The client keeps go-redis' default of 3 retries.
func TestScriptsRunOnceOnStalledRedis(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	// A read timeout that load alone does not reach: the calls with Redis
	// well must not time out.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	reg, pub := testenv.Publisher(t, rdb, "p:", 5*time.Second)
	ctx := context.Background()
	topic := func(data string) *heraldv1.Envelope {
		env := envelope("", data)
		env.UserId, env.Topic = "", "news"
		return env
	}
	cases := []struct {
		name   string
		stream delivery.Stream
		n      int // events a call records
		call   func(data string) error
	}{
		{"publish", delivery.UserStream("ann"), 1, func(data string) error {
			_, err := pub.Publish(ctx, envelope("ann", data), "")
			return err
		}},
		{"batch", delivery.UserStream("bob"), 3, func(data string) error {
			var ns []delivery.Notification
			for i := range 3 {
				ns = append(ns, delivery.Notification{Env: envelope("bob", data+strconv.Itoa(i))})
			}
			_, errs := pub.PublishBatch(ctx, ns)
			return errors.Join(errs...)
		}},
		{"broadcast", delivery.TopicStream("news"), 1, func(data string) error {
			_, err := pub.Broadcast(ctx, topic(data))
			return err
		}},
	}
	testenv.Online(t, rdb, reg, "ann")
	for _, tc := range cases {
		// Once with Redis well, which also caches the script.
		if err := tc.call("before"); err != nil {
			t.Fatalf("%s with Redis well: %v", tc.name, err)
		}
		// go-redis sends its tries on idle pooled connections; a new
		// one would not get past its handshake with Redis stalled.
		fillPool(t, rdb, 4)
		srv.Pause()
		err := tc.call("during")
		srv.Resume()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("%s with Redis stalled: %v, want a read timeout", tc.name, err)
		}
		// Redis runs what it had been sent before this PING's answer.
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		key := delivery.HistoryKeys("p:", tc.stream)[0]
		if n, err := rdb.XLen(ctx, key).Result(); err != nil || n != int64(2*tc.n) {
			t.Errorf("%s: history holds %d events (%v), want %d: each call's once", tc.name, n, err, 2*tc.n)
		}
	}
}

// fillPool leaves n idle connections in rdb's pool.
func fillPool(tb testing.TB, rdb *redis.Client, n int) {
	tb.Helper()
	conns := make([]*redis.Conn, n)
	for i := range conns {
		conns[i] = rdb.Conn()
		if err := conns[i].Ping(context.Background()).Err(); err != nil {
			tb.Fatal(err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

// TestStalledKeyedOfflineQueuedOnce: a keyed notification to a user no edge
// holds, whose script ran in a stall that failed the call, is left pending
// for the offline queue, and the router, never told the script ran, does
// not settle it. Once the pending timeout has passed, the retry queues the
// notification the first run recorded, under its id, and records nothing
// again (a client resuming from before it would otherwise get it twice).
func TestStalledKeyedOfflineQueuedOnce(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	q := &recordingQueue{}
	f := testenv.PublisherOn(t, rdb, "p:", delivery.PublisherConfig{Offline: q, PendingTimeout: time.Second})
	ctx := context.Background()
	// Redis caches the script first: a stalled EVALSHA that finds it
	// unknown runs nothing.
	if _, err := f.Pub.Publish(ctx, envelope("bob", "warm"), ""); err != nil {
		t.Fatal(err)
	}
	fillPool(t, rdb, 4)
	first := envelope("ann", "once")
	srv.Pause()
	_, err := f.Pub.Publish(ctx, first, "k1")
	srv.Resume()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("keyed publish with Redis stalled: %v, want a read timeout", err)
	}
	var res delivery.Result
	testenv.WaitFor(t, 30*time.Second, "the retry to be routed", func() bool {
		res, err = f.Pub.Publish(ctx, envelope("ann", "once"), "k1")
		if err != nil && !errors.Is(err, delivery.ErrInFlight) {
			t.Fatalf("retry: %v", err)
		}
		return err == nil
	})
	if !res.Queued || res.Duplicate || res.ID != first.Id {
		t.Fatalf("retry: %+v, want the first call's notification %s queued", res, first.Id)
	}
	if n, err := rdb.XLen(ctx, delivery.HistoryKeys("p:", delivery.UserStream("ann"))[0]).Result(); err != nil || n != 1 {
		t.Errorf("history holds %d events (%v), want the first run's only", n, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.envs) != 2 || q.envs[1].Id != first.Id {
		t.Errorf("offline queue got %d notifications, want bob's and the first call's once", len(q.envs))
	}
}
