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
