package history_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// fixture is a publisher that writes the histories the tests read.
type fixture struct {
	rdb    *redis.Client
	pub    *delivery.Publisher
	prefix string
}

func newTestPublisher(tb testing.TB) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	_, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	return &fixture{rdb: rdb, pub: pub, prefix: prefix}
}

// newPublisherWith returns a fixture whose publisher has cfg.
func newPublisherWith(tb testing.TB, cfg delivery.PublisherConfig) *fixture {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return &fixture{rdb: rdb, pub: pub, prefix: prefix}
}

// publishEach publishes an event to user through each of pubs in turn and
// returns their event ids.
func publishEach(tb testing.TB, user string, pubs ...*delivery.Publisher) []uint64 {
	tb.Helper()
	var ids []uint64
	for i, pub := range pubs {
		res, err := pub.Publish(context.Background(), envelope(user, strconv.Itoa(i)), "")
		if err != nil {
			tb.Fatal(err)
		}
		id, err := delivery.ParseEventID(res.EventID)
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func envelope(user, data string) *heraldv1.Envelope {
	now := time.Now()
	return &heraldv1.Envelope{
		Id:         delivery.NewID(now),
		UserId:     user,
		Event:      "update",
		Data:       []byte(data),
		AcceptedAt: timestamppb.New(now),
	}
}
