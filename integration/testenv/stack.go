package testenv

import (
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
