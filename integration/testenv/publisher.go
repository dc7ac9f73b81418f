package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// PublisherFixture is a publisher with its presence registry, on a Redis
// under a prefix: what the delivery packages' tests publish through.
type PublisherFixture struct {
	RDB    *redis.Client
	Reg    *presence.Registry
	Pub    *delivery.Publisher
	Prefix string
}

// PublisherOn returns a PublisherFixture on rdb, under prefix, whose
// publisher has cfg.
func PublisherOn(tb testing.TB, rdb *redis.Client, prefix string, cfg delivery.PublisherConfig) *PublisherFixture {
	tb.Helper()
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return &PublisherFixture{RDB: rdb, Reg: reg, Pub: pub, Prefix: prefix}
}

// Subscribe listens on user's channel the way an edge does; the
// subscription is closed at cleanup.
func (f *PublisherFixture) Subscribe(tb testing.TB, user string) *redis.PubSub {
	tb.Helper()
	ps := f.RDB.Subscribe(context.Background(), delivery.Channel(f.Prefix, delivery.UserStream(user)))
	if _, err := ps.Receive(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ps.Close() })
	return ps
}

// Lease makes user online in the registry: a live lease, and no
// subscription (see Subscribe).
func (f *PublisherFixture) Lease(tb testing.TB, user string) {
	tb.Helper()
	c := presence.Conn{User: user, ID: "c-" + user, Edge: "edge", Since: time.Now()}
	if err := f.Reg.Lease(context.Background(), c); err != nil {
		tb.Fatal(err)
	}
}

// Envelope is a notification of data to user, accepted now.
func Envelope(user, data string) *heraldv1.Envelope {
	now := time.Now()
	return &heraldv1.Envelope{
		Id:         delivery.NewID(now),
		UserId:     user,
		Event:      "update",
		Data:       []byte(data),
		AcceptedAt: timestamppb.New(now),
	}
}
