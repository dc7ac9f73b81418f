package router_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// TestNotifyBatch: each notification of a batch gets its own result: an
// invalid one its InvalidArgument, the valid ones routed as Notify routes
// them, with idempotency keys holding within the batch and across calls.
func TestNotifyBatch(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := context.Background()
	ps := r.online(t, "alice")

	req := &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{
		{UserId: "alice", Event: "a", Data: []byte("0")},
		{UserId: "", Data: []byte("1")},                                      // invalid
		{UserId: "alice", Data: []byte("2"), IdempotencyKey: "k"},            // routed
		{UserId: "alice", Data: []byte("3"), IdempotencyKey: "k"},            // duplicate of 2
		{UserId: "bob", Data: []byte("4")},                                   // offline
		{UserId: "alice", Data: []byte{0xff}},                                // invalid UTF-8
		{UserId: "alice", Data: []byte("6"), Ttl: durationpb.New(time.Hour)}, // routed
	}}
	resp, err := r.client.NotifyBatch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	res := resp.GetResults()
	if len(res) != len(req.Notifications) {
		t.Fatalf("%d results for %d notifications", len(res), len(req.Notifications))
	}
	for i, want := range []struct {
		code  codes.Code
		route heraldv1.Route
		dup   bool
		field string
	}{
		{codes.OK, heraldv1.Route_ROUTE_ONLINE, false, ""},
		{codes.InvalidArgument, 0, false, "user_id"},
		{codes.OK, heraldv1.Route_ROUTE_ONLINE, false, ""},
		{codes.OK, heraldv1.Route_ROUTE_ONLINE, true, ""},
		{codes.OK, heraldv1.Route_ROUTE_OFFLINE, false, ""},
		{codes.InvalidArgument, 0, false, "data"},
		{codes.OK, heraldv1.Route_ROUTE_ONLINE, false, ""},
	} {
		got := res[i]
		if codes.Code(got.GetCode()) != want.code || got.GetResponse().GetRoute() != want.route ||
			got.GetResponse().GetDuplicate() != want.dup || !strings.HasPrefix(got.GetMessage(), want.field) {
			t.Errorf("result %d: %v; want code %v, route %v, duplicate %v, message on %q", i, got, want.code, want.route, want.dup, want.field)
		}
		if want.code == codes.OK && (got.GetResponse().GetNotificationId() == "" || got.GetResponse().GetEventId() == "") {
			t.Errorf("result %d has no ids: %v", i, got)
		}
		if want.code != codes.OK && got.GetResponse() != nil {
			t.Errorf("result %d failed but has a response: %v", i, got)
		}
	}
	if res[3].GetResponse().GetNotificationId() != res[2].GetResponse().GetNotificationId() {
		t.Errorf("the duplicate's id %s is not the first's %s", res[3].GetResponse().GetNotificationId(), res[2].GetResponse().GetNotificationId())
	}
	// alice got 0, 2 and 6, in order, then a later Notify's.
	marker, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("marker")})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, i := range []int{0, 2, 6} {
		want = append(want, res[i].GetResponse().GetNotificationId())
	}
	want = append(want, marker.GetNotificationId())
	for k, id := range want {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil || env.GetId() != id {
			t.Fatalf("event %d on alice's channel: %v (%v), want %s", k, env.GetId(), err, id)
		}
	}
	// A Notify retrying a batch's key is its duplicate.
	again, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("retry"), IdempotencyKey: "k"})
	if err != nil || !again.GetDuplicate() || again.GetNotificationId() != res[2].GetResponse().GetNotificationId() {
		t.Fatalf("Notify retrying the batch's key: %v, %v; want the batch's as a duplicate", again, err)
	}

	// An empty batch routes nothing.
	if resp, err := r.client.NotifyBatch(ctx, &heraldv1.NotifyBatchRequest{}); err != nil || len(resp.GetResults()) != 0 {
		t.Fatalf("empty batch: %v, %v", resp, err)
	}
}

// TestNotifyBatchLimit: a batch of 1000 is routed; one of 1001 is refused
// whole, and routes nothing.
func TestNotifyBatchLimit(t *testing.T) {
	r := newTestRouter(t, nil)
	ctx := context.Background()
	batch := func(n int, user string) *heraldv1.NotifyBatchRequest {
		req := &heraldv1.NotifyBatchRequest{}
		for i := range n {
			req.Notifications = append(req.Notifications, &heraldv1.NotifyRequest{UserId: user, Data: []byte(strconv.Itoa(i))})
		}
		return req
	}
	_, err := r.client.NotifyBatch(ctx, batch(1001, "over"))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "1001") {
		t.Fatalf("1001 notifications: %v, want InvalidArgument naming the count", err)
	}
	last := r.prefix + presence.HashTag("over") + ":last"
	if n, _ := r.rdb.Exists(ctx, last).Result(); n != 0 {
		t.Fatal("the refused batch recorded something in the user's history")
	}
	resp, err := r.client.NotifyBatch(ctx, batch(1000, "full"))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for i, res := range resp.GetResults() {
		if res.GetCode() != 0 || res.GetResponse().GetRoute() != heraldv1.Route_ROUTE_OFFLINE {
			t.Fatalf("notification %d of 1000: %v", i, res)
		}
		ids[res.GetResponse().GetEventId()] = true
	}
	if len(ids) != 1000 {
		t.Fatalf("1000 notifications got %d distinct event ids", len(ids))
	}
}

// TestNotifyBatchAuth: a batch's notifications are authorised one by one
// (a refused one fails alone), and a batch of n spends n of the caller's
// rate limit.
func TestNotifyBatchAuth(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{
		Name: "orders-service", KeySHA256: router.HashKey(ordersKey), Rate: 10, Burst: 5,
		Users: []string{"acme:*"}, AckDeadline: "3s",
	}})
	ctx := withKey(ordersKey)
	ps := r.online(t, "acme:1")
	resp, err := r.client.NotifyBatch(ctx, &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{
		{UserId: "acme:1", Data: []byte("ok")},
		{UserId: "mallory", Data: []byte("denied")},
		{UserId: "acme:2", Data: []byte("ok, offline")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	res := resp.GetResults()
	if res[0].GetCode() != 0 || res[0].GetResponse().GetRoute() != heraldv1.Route_ROUTE_ONLINE ||
		res[2].GetCode() != 0 || res[2].GetResponse().GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("permitted notifications: %v, %v", res[0], res[2])
	}
	if codes.Code(res[1].GetCode()) != codes.PermissionDenied || !strings.Contains(res[1].GetMessage(), `may not notify user "mallory"`) ||
		res[1].GetResponse() != nil {
		t.Fatalf("refused notification: %v, want PermissionDenied naming the user", res[1])
	}
	if n := r.refused(t, "permission_denied"); n != 1 {
		t.Fatalf("refused{permission_denied} = %v, want 1", n)
	}
	msg, err := ps.ReceiveMessage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if env, err := delivery.Unmarshal([]byte(msg.Payload)); err != nil || env.GetId() != res[0].GetResponse().GetNotificationId() {
		t.Fatalf("acme:1 got %v (%v), want its notification", env.GetId(), err)
	}
	if q := r.queued.Load(); q != 1 {
		t.Fatalf("queued %d, want acme:2's only", q)
	}
	// Each routed notification counts as a Notify; the refused one, as a
	// refused Notify, does not.
	for route, want := range map[string]float64{"online": 1, "push_queued": 1, "none": 0} {
		if n := r.notifies(t, route); n != want {
			t.Errorf("notify_total{route=%q} = %v, want %v", route, n, want)
		}
	}

	// 3 of the burst of 5 are spent: a batch of 3 is over the limit, a
	// batch of 6 can never pass, and a batch of 2 passes.
	over := &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{
		{UserId: "acme:1"}, {UserId: "acme:1"}, {UserId: "acme:1"},
	}}
	if _, err := r.client.NotifyBatch(ctx, over); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("batch of 3 with 2 left: %v, want ResourceExhausted", err)
	}
	six := &heraldv1.NotifyBatchRequest{}
	for range 6 {
		six.Notifications = append(six.Notifications, &heraldv1.NotifyRequest{UserId: "acme:1"})
	}
	r.clock.Advance(time.Second) // a full bucket
	// No wait lets it through: the caller's error, not a rate limit.
	if _, err := r.client.NotifyBatch(ctx, six); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), "batches of at most 5") || retryInfo(err) != nil {
		t.Fatalf("batch of 6 over a burst of 5: %v, want InvalidArgument saying the largest batch, without RetryInfo", err)
	}
	// The caller's default ack deadline applies to each notification.
	ack := &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{
		{UserId: "acme:1", Data: []byte("a"), DeliveryMode: heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH},
		{UserId: "acme:1", Data: []byte("b")},
	}}
	resp, err = r.client.NotifyBatch(ctx, ack)
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range resp.GetResults() {
		if res.GetCode() != 0 {
			t.Fatalf("notification %d of a batch of 2: %v", i, res)
		}
	}
	for range 2 {
		msg, err := ps.ReceiveMessage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil {
			t.Fatal(err)
		}
		if env.GetId() == resp.GetResults()[0].GetResponse().GetNotificationId() &&
			env.GetAckBy().AsTime().Sub(env.GetAcceptedAt().AsTime()) != 3*time.Second {
			t.Fatalf("ack-or-push notification acks by %v after acceptance, want the caller's 3s",
				env.GetAckBy().AsTime().Sub(env.GetAcceptedAt().AsTime()))
		}
	}
	if n := r.refused(t, "rate_limited"); n != 2 {
		t.Fatalf("refused{rate_limited} = %v, want 2", n)
	}
}

// notifies is the sum of herald_router_notify_total{route} over codes.
func (r *authRouter) notifies(tb testing.TB, route string) float64 {
	tb.Helper()
	mfs, err := r.metrics.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "herald_router_notify_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == route {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
