package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// TestHostileIdempotencyKeyStaysWithItsUser is issue 15's case: a caller
// that sends alice's notification with idempotency key "x}:hist" must not
// create (or trip over) a key of user "alice}:idem:x", in either order.
func TestHostileIdempotencyKeyStaysWithItsUser(t *testing.T) {
	const victim, key = "alice}:idem:x", "x}:hist"
	hostile := &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("a"), IdempotencyKey: key}
	plain := &heraldv1.NotifyRequest{UserId: victim, Data: []byte("v")}
	for _, tc := range []struct {
		name  string
		order []*heraldv1.NotifyRequest
	}{
		{"hostile key first", []*heraldv1.NotifyRequest{hostile, plain, plain, hostile}},
		{"victim first", []*heraldv1.NotifyRequest{plain, hostile, plain, hostile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, nil)
			ctx := context.Background()
			var firstHostile string
			for i, req := range tc.order {
				resp, err := r.client.Notify(ctx, req)
				if err != nil {
					t.Fatalf("call %d (user %q): %v", i, req.GetUserId(), err)
				}
				if req == hostile {
					if firstHostile == "" {
						firstHostile = resp.GetNotificationId()
					} else if !resp.GetDuplicate() || resp.GetNotificationId() != firstHostile {
						t.Fatalf("retry of alice's notification: %v, want the duplicate of %s", resp, firstHostile)
					}
				} else if resp.GetDuplicate() {
					t.Fatalf("%q's notification %d was taken for a duplicate: %v", victim, i, resp)
				}
			}
			for _, user := range []string{"alice", victim} {
				hist := delivery.HistoryKeys(r.prefix, delivery.UserStream(user))[0]
				n, err := r.rdb.XLen(ctx, hist).Result()
				if err != nil {
					t.Fatalf("history of %q: %v", user, err)
				}
				if want := map[string]int64{"alice": 1, victim: 2}[user]; n != want {
					t.Errorf("history of %q has %d events, want %d", user, n, want)
				}
			}
		})
	}
}

// TestIdempotencyKeyPerCaller: two callers that happen to use the same
// idempotency key for the same user both get their notification delivered,
// each with its own id; each one's retry is its own duplicate.
func TestIdempotencyKeyPerCaller(t *testing.T) {
	const billingKey = "hk_billing_52c0d1"
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "orders-service", KeySHA256: router.HashKey(ordersKey), Users: []string{"alice"}},
		{Name: "billing", KeySHA256: router.HashKey(billingKey), Users: []string{"alice"}},
	})
	ps := r.online(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ids := map[string]string{}
	for _, key := range []string{ordersKey, billingKey, ordersKey, billingKey} {
		resp, err := r.client.Notify(withKey(key), &heraldv1.NotifyRequest{UserId: "alice", Data: []byte(key), IdempotencyKey: "order-17"})
		if err != nil {
			t.Fatal(err)
		}
		if first, seen := ids[key]; !seen {
			if resp.GetDuplicate() {
				t.Fatalf("caller %s's first call is a duplicate of another caller's: %v", key, resp)
			}
			ids[key] = resp.GetNotificationId()
		} else if !resp.GetDuplicate() || resp.GetNotificationId() != first {
			t.Fatalf("caller %s's retry: %v, want the duplicate of %s", key, resp, first)
		}
	}
	got := map[string]bool{}
	for range 2 {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil {
			t.Fatal(err)
		}
		got[string(env.GetData())] = true
	}
	if !got[ordersKey] || !got[billingKey] {
		t.Fatalf("delivered %v, want both callers' notifications", got)
	}
}

// TestDuplicateReportsWhatWasApplied: a retry answers what its first call
// did (id, route, event id, delivery mode), whatever mode or content the
// retry asks for, alone or in a batch; nothing is delivered again and no
// receipt is created for it.
func TestDuplicateReportsWhatWasApplied(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders-service", KeySHA256: router.HashKey(ordersKey), Users: []string{"*"}}})
	ps := r.online(t, "alice")
	ctx := withKey(ordersKey)
	recvCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ff, ack := heraldv1.DeliveryMode_DELIVERY_MODE_FIRE_AND_FORGET, heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH
	receipts := r.prefix + presence.HashTag("alice") + ":receipts"
	for _, tc := range []struct {
		key          string
		first, retry heraldv1.DeliveryMode
		receipts     int64 // after the first call
	}{
		{"ff-then-ack", ff, ack, 0},
		{"ack-then-ff", ack, ff, 1},
	} {
		first, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("first"), IdempotencyKey: tc.key, DeliveryMode: tc.first})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ps.ReceiveMessage(recvCtx); err != nil {
			t.Fatal(err)
		}
		retry := &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("changed"), IdempotencyKey: tc.key, DeliveryMode: tc.retry}
		single, err := r.client.Notify(ctx, retry)
		if err != nil {
			t.Fatal(err)
		}
		batch, err := r.client.NotifyBatch(ctx, &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{retry, retry}})
		if err != nil {
			t.Fatal(err)
		}
		for i, got := range []*heraldv1.NotifyResponse{single, batch.GetResults()[0].GetResponse(), batch.GetResults()[1].GetResponse()} {
			if !got.GetDuplicate() || got.GetNotificationId() != first.GetNotificationId() || got.GetEventId() != first.GetEventId() ||
				got.GetRoute() != first.GetRoute() || got.GetDeliveryMode() != tc.first {
				t.Errorf("%s: retry %d answered %v, want the first call's %v", tc.key, i, got, first)
			}
		}
		if n, err := r.rdb.HLen(context.Background(), receipts).Result(); err != nil || n != tc.receipts {
			t.Errorf("%s: %d receipts (%v), want %d: the retry must not create one", tc.key, n, err, tc.receipts)
		}
	}
	// Nothing was published again: the next message is a new notification.
	resp, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("next")})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := ps.ReceiveMessage(recvCtx)
	if err != nil {
		t.Fatal(err)
	}
	if env, err := delivery.Unmarshal([]byte(msg.Payload)); err != nil || env.GetId() != resp.GetNotificationId() {
		t.Fatalf("next message is %v (%v), want the new notification %s: a retry was delivered again", env, err, resp.GetNotificationId())
	}
}
