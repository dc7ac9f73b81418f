package router

import (
	"context"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// idempotencyKey is the publisher's idempotency key for key sent on the
// call of ctx: scoped to the authenticated caller (see CallerFrom), or to
// the one anonymous caller of a router without authentication. Two callers
// that send the same key for the same user send two notifications.
func idempotencyKey(ctx context.Context, key string) string {
	caller, _ := CallerFrom(ctx)
	return delivery.IdempotencyKey(caller, key)
}

// appliedMode is the delivery mode that was applied to a routed
// notification: the one requested or, on a duplicate, the first call's,
// which is what the notification was routed with (a retry that asks for
// another mode changes nothing).
func appliedMode(requested heraldv1.DeliveryMode, res delivery.Result) heraldv1.DeliveryMode {
	switch {
	case !res.Duplicate:
		return requested
	case res.AckBy.IsZero():
		return heraldv1.DeliveryMode_DELIVERY_MODE_FIRE_AND_FORGET
	default:
		return heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH
	}
}
