package receipts_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestConfirmClock: Confirm judges how close to its deadline a receipt was
// created by Config.Now: close, it puts the deadline back in the index (a
// millisecond past it); far, it leaves the index alone.
func TestConfirmClock(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	ctx := context.Background()
	deadline := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	env := &heraldv1.Envelope{Id: delivery.NewID(time.Now()), UserId: "cal", AckBy: timestamppb.New(deadline)}
	member := env.GetId() + "|cal"
	due := delivery.DueKey(prefix, 0)
	for _, tc := range []struct {
		name string
		now  time.Time
		put  bool
	}{
		{"an hour before the deadline", deadline.Add(-time.Hour), false},
		{"a second before the deadline", deadline.Add(-time.Second), true},
	} {
		r := receipts.New(rdb, receipts.Config{Prefix: prefix, Shards: 1, Now: func() time.Time { return tc.now }})
		if err := r.Confirm(ctx, []*heraldv1.Envelope{env}); err != nil {
			t.Fatal(err)
		}
		score, err := rdb.ZScore(ctx, due, member).Result()
		switch {
		case tc.put && (err != nil || int64(score) != deadline.UnixMilli()+1):
			t.Errorf("%s: index score %v, %v; want the deadline put back, a millisecond past it", tc.name, score, err)
		case !tc.put && err == nil:
			t.Errorf("%s: the deadline was put in the index (score %v); want it left alone", tc.name, score)
		}
	}
}

// TestSweeperClock: a sweeper's clock is its receipts' Config.Now: one
// whose clock is past a receipt's deadline falls it back, though the
// deadline is an hour away.
func TestSweeperClock(t *testing.T) {
	t.Parallel()
	q := &recordingQueue{}
	rdb, prefix := testenv.Redis(t)
	later := time.Now().Add(2 * time.Hour)
	rc := receipts.New(rdb, receipts.Config{Prefix: prefix, SweepEvery: 10 * time.Millisecond,
		Now: func() time.Time { return later }})
	f := newPublisherOn(t, rdb, prefix, delivery.PublisherConfig{Offline: q, Receipts: rc})
	f.Subscribe(t, "sam")
	f.Lease(t, "sam")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := envelope("sam", "ack me")
	env.AckBy = timestamppb.New(time.Now().Add(time.Hour))
	res, err := f.Pub.Publish(ctx, env, "")
	if err != nil || res.Route != delivery.RouteOnline {
		t.Fatalf("publish: %+v, %v; want it online", res, err)
	}
	done := make(chan error, 1)
	go func() { done <- rc.NewSweeper(q, nil).Run(ctx) }()
	testenv.WaitFor(t, 10*time.Second, "the receipt to fall back", func() bool { return q.ids()[env.GetId()] == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
