package receipts_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/integration/testenv"
)

// TestReceiptSweptBeforeItExists: when an ack-or-push deadline passes
// while the notify script is on its way, a sweeper finds the deadline in the
// index before the receipt exists and drops it. The publisher puts the
// deadline back once the script has created the receipt, so the
// notification still falls back, once; a sweep as the script runs cannot
// drop the deadline put back.
func TestReceiptSweptBeforeItExists(t *testing.T) {
	t.Parallel()
	q := &recordingQueue{}
	rdb, prefix := testenv.Redis(t)
	rc := receipts.New(rdb, receipts.Config{Prefix: prefix})
	// The hook runs after Publish has scheduled the deadline, before the
	// notify script goes to Redis.
	hook := &scheduleHook{Receipts: rc}
	f := newPublisherOn(t, rdb, prefix, delivery.PublisherConfig{Offline: q, Receipts: hook})
	pub := f.Pub
	f.Subscribe(t, "ann")
	f.Lease(t, "ann")
	ctx := context.Background()
	sweeper := rc.NewSweeper(q, nil)
	later := time.Now().Add(time.Minute)
	var sweepErr error
	hook.afterSchedule = func() { sweepErr = receipts.SweepAt(ctx, sweeper, later) }

	env := envelope("ann", "ack me")
	env.AckBy = timestamppb.New(time.Now().Add(time.Second))
	res, err := pub.Publish(ctx, env, "")
	if err != nil || sweepErr != nil {
		t.Fatalf("publish: %v; the sweep as it ran: %v", err, sweepErr)
	}
	if res.Route != delivery.RouteOnline {
		t.Fatalf("route %v, want online", res.Route)
	}
	if n := len(q.ids()); n != 0 {
		t.Fatalf("%d fallbacks before the receipt existed, want 0", n)
	}
	for range 2 {
		if err := receipts.SweepAt(ctx, sweeper, later); err != nil {
			t.Fatal(err)
		}
	}
	if got := q.ids()[env.GetId()]; got != 1 {
		t.Errorf("the notification fell back %d times, want once", got)
	}
}

// TestPublishBatchRefusesEpochAckBy: an ack deadline at 1970 is refused
// alone. The script reads a deadline of 0 as none and would not count the
// notification's receipt keys, so that the next one in the batch would
// take them for its own.
func TestPublishBatchRefusesEpochAckBy(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	f := newPublisherOn(t, rdb, prefix, delivery.PublisherConfig{Offline: &recordingQueue{},
		Receipts: receipts.New(rdb, receipts.Config{Prefix: prefix})})
	f.Subscribe(t, "cy")
	f.Lease(t, "cy")
	bad := envelope("cy", "at 1970")
	bad.AckBy = timestamppb.New(time.UnixMilli(0))
	good := envelope("cy", "plain")
	results, errs := f.Pub.PublishBatch(context.Background(), []delivery.Notification{{Env: bad}, {Env: good}})
	if errs[0] == nil {
		t.Errorf("an ack deadline at 1970 was taken: %+v", results[0])
	}
	if errs[1] != nil || results[1].Route != delivery.RouteOnline {
		t.Fatalf("the notification after it: %+v, %v; want online", results[1], errs[1])
	}
}
