package router

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// authorizeBatch checks each notification of a batch as authorize checks a
// Notify. The refused ones are refused alone, in their own results: it
// returns ctx carrying their refusals for NotifyBatch.
func (c *Callers) authorizeBatch(ctx context.Context, cl *caller, method string, req *heraldv1.NotifyBatchRequest) context.Context {
	var denied []error
	for i, n := range req.GetNotifications() {
		if err := c.authorize(ctx, cl, method, n); err != nil {
			if denied == nil {
				denied = make([]error, len(req.GetNotifications()))
			}
			denied[i] = err
		}
	}
	if denied == nil {
		return ctx
	}
	return withDenied(ctx, denied)
}

// authorize checks the request's user or topic against the caller's
// permissions. A request naming no user or topic is let through: the
// handler refuses it as InvalidArgument, and routes nothing. (A request
// that could not be decoded reaches here empty; see deferDecodeErrors.)
func (c *Callers) authorize(ctx context.Context, cl *caller, method string, req any) error {
	var what, target string
	switch r := req.(type) {
	case *heraldv1.NotifyRequest:
		what, target = "notify user", r.GetUserId()
	case *heraldv1.RegisterDeviceRequest:
		what, target = "register devices for user", r.GetUserId()
	case *heraldv1.UnregisterDeviceRequest:
		what, target = "unregister devices of user", r.GetUserId()
	case *heraldv1.BroadcastRequest:
		topic := r.GetTopic()
		if topic == "" || delivery.TopicAllowed(topic, cl.topics) {
			return nil
		}
		msg := fmt.Sprintf("router: caller %q may not broadcast to topic %q (its topics: %s)", cl.name, topic, patterns(cl.topics))
		return c.refuse(ctx, refusedPermissionDenied, cl.name, method, status.New(codes.PermissionDenied, msg), slog.String("topic", topic))
	default:
		msg := fmt.Sprintf("router: no permission rule covers %s, so no caller may call it", method)
		return c.refuse(ctx, refusedPermissionDenied, cl.name, method, status.New(codes.PermissionDenied, msg))
	}
	if target == "" || userAllowed(target, cl.users) {
		return nil
	}
	msg := fmt.Sprintf("router: caller %q may not %s %q (its users: %s)", cl.name, what, target, patterns(cl.users))
	return c.refuse(ctx, refusedPermissionDenied, cl.name, method, status.New(codes.PermissionDenied, msg), c.userIDs.Attr(target))
}

// patterns lists a caller's patterns for a refusal message.
func patterns(ps []string) string {
	if len(ps) == 0 {
		return "none"
	}
	return strings.Join(ps, ", ")
}

// userAllowed reports whether user matches a pattern: an exact id, a prefix
// ending in "*", or "*".
func userAllowed(user string, allowed []string) bool {
	for _, p := range allowed {
		if p == user || (strings.HasSuffix(p, "*") && strings.HasPrefix(user, p[:len(p)-1])) {
			return true
		}
	}
	return false
}
