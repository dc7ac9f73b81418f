package integration_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestRefusedNotifyRetriedOnceOverSSE: a notification for a user who is
// away, refused because Kafka did not take it (UNAVAILABLE: "retry with the
// same idempotency_key"), then retried with its key once the user is back,
// reaches the user's stream once. The refused call's script had already
// recorded it in the user's history, which a client resuming with
// Last-Event-ID replays; the retry recorded and published it again under a
// new event id, and the client got it twice (what TestFaultEdgeKilled saw
// as sse_twice=1 when a stale-routed notification's Kafka write, 1 s at
// most there, failed under load). The retry now queues the first one,
// under its ids: pushed, and recovered from history.
func TestRefusedNotifyRetriedOnceOverSSE(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s := newSystemWith(t, options{edges: 1, offline: o})
	const user = "ivy"
	o.Register(t, user, "tok-"+user)
	tok := token(t, user)
	url := s.edges[0].url + "/v1/events?access_token=" + tok

	c := connect(t, s.edges[0].url, tok)
	s.notify(t, &heraldv1.NotifyRequest{UserId: user, Data: []byte("before")})
	if ev := c.next(t, 5*time.Second); ev.Data != "before" {
		t.Fatalf("got %q, want before", ev.Data)
	}
	cursor := c.lastID()
	c.close()
	s.waitOffline(t, user)

	req := &heraldv1.NotifyRequest{UserId: user, Data: []byte("once"), IdempotencyKey: "k-once"}
	o.Kafka.Stop()
	_, err := s.router.Notify(context.Background(), req)
	o.Kafka.Start()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Notify while Kafka is down: %v, want Unavailable", err)
	}

	// The client comes back, then the caller retries with the same key.
	c = connectFrom(t, url, cursor)
	resp := s.notify(t, req)
	s.notify(t, &heraldv1.NotifyRequest{UserId: user, Data: []byte("after")})
	var got []string
	for len(got) == 0 || got[len(got)-1] != "after" {
		got = append(got, c.next(t, 10*time.Second).Data)
	}
	if len(got) != 2 || got[0] != "once" {
		t.Fatalf("after the retry (route %v) the stream got %q, want [once after]", resp.GetRoute(), got)
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("the retry's route is %v, want ROUTE_PUSH_QUEUED", resp.GetRoute())
	}
	// A marker queued after the retry, for the same user: the worker pushes
	// one user's notifications in order, so once the marker is pushed, any
	// second push of the retried one would have been pushed too.
	c.close()
	s.waitOffline(t, user)
	marker := s.notify(t, &heraldv1.NotifyRequest{UserId: user, Data: []byte("marker")})
	if marker.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("the marker's route is %v, want ROUTE_PUSH_QUEUED", marker.GetRoute())
	}
	o.StartWorker(t, o.WorkerConfig(), nil)
	var pushed []string
	testenv.WaitFor(t, 30*time.Second, "the marker's push", func() bool {
		pushed = pushed[:0]
		for _, m := range o.Emulator.Messages() {
			pushed = append(pushed, m.Data[fcm.DataID])
		}
		return slices.Contains(pushed, marker.GetNotificationId())
	})
	if len(pushed) != 2 || pushed[0] != resp.GetNotificationId() {
		t.Fatalf("pushed %v, want notification %s once, then the marker %s", pushed, resp.GetNotificationId(), marker.GetNotificationId())
	}
}
