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
