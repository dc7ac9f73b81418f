package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
)

// Publisher returns a presence registry and a publisher on rdb under prefix,
// with leases of ttl: the Redis side of a router.
func Publisher(tb testing.TB, rdb redis.UniversalClient, prefix string, ttl time.Duration) (*presence.Registry, *delivery.Publisher) {
	tb.Helper()
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	return reg, pub
}

// Online makes user online the way an edge does: it subscribes user's
// channel (and waits for Redis to confirm) and leases a connection in reg.
// The subscription is closed at cleanup.
func Online(tb testing.TB, rdb *redis.Client, reg *presence.Registry, user string) *redis.PubSub {
	tb.Helper()
	ctx := context.Background()
	ps := rdb.Subscribe(ctx, delivery.Channel(reg.Prefix(), delivery.UserStream(user)))
	if _, err := ps.Receive(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ps.Close() })
	if err := reg.Lease(ctx, presence.Conn{User: user, ID: "c1", Edge: "e1", Since: time.Now()}); err != nil {
		tb.Fatal(err)
	}
	return ps
}
