package receipts_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// recordingQueue is an offline queue that keeps what it takes.
type recordingQueue struct {
	mu   sync.Mutex
	envs []*heraldv1.Envelope
}

func (q *recordingQueue) Enqueue(_ context.Context, env *heraldv1.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.envs = append(q.envs, env)
	return nil
}

func (q *recordingQueue) ids() map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]int{}
	for _, e := range q.envs {
		out[e.GetId()]++
	}
	return out
}

// scheduleHook is the publisher's receipts, calling afterSchedule once the
// deadlines are scheduled: before the notify script creates the receipts.
type scheduleHook struct {
	*receipts.Receipts
	afterSchedule func()
}

func (h *scheduleHook) Schedule(ctx context.Context, envs []*heraldv1.Envelope) []error {
	errs := h.Receipts.Schedule(ctx, envs)
	if h.afterSchedule != nil {
		h.afterSchedule()
	}
	return errs
}

// fixture is a publisher with its presence registry.
type fixture struct {
	rdb    *redis.Client
	reg    *presence.Registry
	pub    *delivery.Publisher
	prefix string
}

// newPublisherOn returns a fixture on rdb, under prefix, whose publisher has
// cfg.
func newPublisherOn(tb testing.TB, rdb *redis.Client, prefix string, cfg delivery.PublisherConfig) *fixture {
	tb.Helper()
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return &fixture{rdb: rdb, reg: reg, pub: pub, prefix: prefix}
}

// subscribe listens on user's channel the way an edge does.
func (f *fixture) subscribe(tb testing.TB, user string) *redis.PubSub {
	tb.Helper()
	ps := f.rdb.Subscribe(context.Background(), delivery.Channel(f.prefix, delivery.UserStream(user)))
	if _, err := ps.Receive(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ps.Close() })
	return ps
}

func (f *fixture) online(tb testing.TB, user string) {
	tb.Helper()
	c := presence.Conn{User: user, ID: "c-" + user, Edge: "edge", Since: time.Now()}
	if err := f.reg.Lease(context.Background(), c); err != nil {
		tb.Fatal(err)
	}
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
