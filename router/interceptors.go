package router

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// callerKey is the context key of the authenticated caller's name.
type callerKey struct{}

// CallerFrom returns the name of the caller that made the call ctx belongs
// to, when the call was authenticated.
func CallerFrom(ctx context.Context) (string, bool) {
	name, ok := ctx.Value(callerKey{}).(string)
	return name, ok
}

// publicMethod reports whether a method is served without credentials:
// the unary health check, which load balancers, Kubernetes' gRPC probe and
// grpc_health_probe call, and which ends as soon as it is answered.
// Health's Watch and reflection are streams that a caller keeps open for
// as long as it likes, so they need credentials, as every other call.
func publicMethod(fullMethod string) bool {
	return fullMethod == healthpb.Health_Check_FullMethodName
}

// openStream reports whether a streaming method other than NotifyStream is
// served to every authenticated caller: health watching and reflection
// (grpcurl), which reveal the router's health and the API's shape.
func openStream(fullMethod string) bool {
	return fullMethod == healthpb.Health_Watch_FullMethodName || strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// tapCallerKey is the context key of the caller TapHandle authenticated.
type tapCallerKey struct{}

// TapHandle authenticates each call when its headers arrive, before gRPC
// reads its request: an unauthenticated caller is refused UNAUTHENTICATED
// without one byte of its message being read or decoded, whatever its size
// or content. The connection of an authenticated call is one that a new
// connection no longer evicts at Config.MaxConns. Install it with
// grpc.InTapHandle next to the interceptors, which then reuse its result.
// It runs on the connection's reader, so it does no I/O: a hash and a
// comparison per configured key.
func (c *Callers) TapHandle() tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if publicMethod(info.FullMethodName) {
			return ctx, nil
		}
		cl, msg := c.authenticate(ctx)
		if cl == nil {
			return nil, c.refuse(ctx, refusedUnauthenticated, "", info.FullMethodName, status.New(codes.Unauthenticated, msg))
		}
		markAuthenticated(ctx)
		return context.WithValue(ctx, tapCallerKey{}, cl), nil
	}
}

// NoAuth is the server option of a router that serves its API without
// credentials (-insecure-no-auth), in place of Callers' tap handle and
// interceptors: every call but Health/Check counts as authenticated for
// Config.MaxConns, so that connections which make no call still make way
// for those which do.
func NoAuth() grpc.ServerOption {
	return grpc.InTapHandle(func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if !publicMethod(info.FullMethodName) {
			markAuthenticated(ctx)
		}
		return ctx, nil
	})
}

// UnaryInterceptor authenticates each call, applies the caller's rate limit,
// checks that the request's user or topic is within the caller's
// permissions, fills in the caller's default ack deadline and passes the
// call on with the caller's name in its context (see CallerFrom).
func (c *Callers) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if publicMethod(info.FullMethod) {
			return handler(ctx, req)
		}
		batch, isBatch := req.(*heraldv1.NotifyBatchRequest)
		cost := 1
		if isBatch && len(batch.GetNotifications()) <= maxBatch {
			// A batch spends a call per notification; one over the limit
			// spends one, and the handler refuses it.
			cost = max(1, len(batch.GetNotifications()))
		}
		cl, err := c.admit(ctx, info.FullMethod, cost)
		if err != nil {
			return nil, err
		}
		defer cl.exit()
		if isBatch {
			if len(batch.GetNotifications()) <= maxBatch {
				ctx = c.authorizeBatch(ctx, cl, info.FullMethod, batch)
			}
		} else if err := c.authorize(ctx, cl, info.FullMethod, req); err != nil {
			return nil, err
		}
		switch r := req.(type) {
		case *heraldv1.NotifyRequest:
			cl.fillAckDeadline(r)
		case *heraldv1.NotifyBatchRequest:
			for _, n := range r.GetNotifications() {
				cl.fillAckDeadline(n)
			}
		}
		return handler(context.WithValue(ctx, callerKey{}, cl.name), req)
	}
}

// fillAckDeadline gives an ack-or-push notification that sets no ack
// deadline the caller's, if it has one.
func (cl *caller) fillAckDeadline(r *heraldv1.NotifyRequest) {
	if cl.ackDeadline > 0 && r.AckDeadline == nil && r.GetDeliveryMode() == heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH {
		r.AckDeadline = durationpb.New(cl.ackDeadline)
	}
}

// StreamInterceptor authenticates streaming calls, each of which is one of
// its caller's calls in flight for as long as it is open. A NotifyStream is
// authenticated once, when it opens, and passed on with its caller's name
// and, for each notification, the checks UnaryInterceptor makes of a Notify
// (see admitFunc). Health's Watch and reflection are served to every
// caller (openStream). Any other streaming method is refused: one added
// later must say what it permits before callers can use it.
func (c *Callers) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == heraldv1.RouterService_NotifyStream_FullMethodName {
			cl, err := c.authenticated(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			if err := c.enter(ss.Context(), cl, info.FullMethod); err != nil {
				return err
			}
			defer cl.exit()
			ctx := context.WithValue(ss.Context(), callerKey{}, cl.name)
			ctx = withAdmit(ctx, func(ctx context.Context, n *heraldv1.NotifyRequest) error {
				return c.admitNotification(ctx, cl, info.FullMethod, n)
			})
			return handler(srv, contextStream{ServerStream: ss, ctx: ctx})
		}
		cl, err := c.admit(ss.Context(), info.FullMethod, 1)
		if err != nil {
			return err
		}
		defer cl.exit()
		if openStream(info.FullMethod) {
			return handler(srv, contextStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, cl.name)})
		}
		return c.authorize(ss.Context(), cl, info.FullMethod, nil)
	}
}

// contextStream is a stream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

// admitNotification makes the checks of a Notify for one notification of a
// stream: it spends one of the caller's calls, authorises the user and
// fills in the caller's ack deadline. A refusal is the notification's, and
// carries its RetryInfo in the status (there is no trailer per message).
func (c *Callers) admitNotification(ctx context.Context, cl *caller, method string, n *heraldv1.NotifyRequest) error {
	if st, _ := c.spend(cl, 1); st != nil {
		return c.refuse(ctx, refusedRateLimited, cl.name, method, st)
	}
	if err := c.authorize(ctx, cl, method, n); err != nil {
		return err
	}
	cl.fillAckDeadline(n)
	return nil
}

// admit authenticates a call, counts it among its caller's calls in flight
// (enter) and spends n tokens of its caller's rate limit: one for a call,
// one per notification for a batch. The caller of an admitted call calls
// exit when it ends.
func (c *Callers) admit(ctx context.Context, method string, n int) (*caller, error) {
	cl, err := c.authenticated(ctx, method)
	if err != nil {
		return nil, err
	}
	if err := c.enter(ctx, cl, method); err != nil {
		return nil, err
	}
	if st, d := c.spend(cl, n); st != nil {
		cl.exit()
		if d > 0 {
			// The same hint for a client's retry policy (ServiceConfig):
			// gRPC waits this long before its next attempt, instead of its
			// backoff.
			_ = grpc.SetTrailer(ctx, metadata.Pairs(retryPushbackHeader, strconv.FormatInt(d.Milliseconds(), 10)))
		}
		return nil, c.refuse(ctx, refusedRateLimited, cl.name, method, st)
	}
	return cl, nil
}

// enter counts a call among its caller's calls in flight, unless the
// caller holds MaxCallsPerCaller of them: then the call is refused
// RESOURCE_EXHAUSTED, without RetryInfo (no delay is known: one of the
// caller's own calls must end). A call entered calls cl.exit when it ends.
func (c *Callers) enter(ctx context.Context, cl *caller, method string) error {
	if n := cl.calls.Add(1); c.maxCalls >= 0 && n > int64(c.maxCalls) {
		cl.exit()
		return c.refuse(ctx, refusedTooManyCalls, cl.name, method, status.Newf(codes.ResourceExhausted,
			"router: caller %q has %d calls and streams in flight on this router, its limit; "+
				"wait for one to end (streams end when closed)", cl.name, c.maxCalls))
	}
	return nil
}

// exit ends a call that enter counted.
func (cl *caller) exit() { cl.calls.Add(-1) }

// authenticated is the caller of a call, authenticated by TapHandle or,
// without it, now.
func (c *Callers) authenticated(ctx context.Context, method string) (*caller, error) {
	if cl, _ := ctx.Value(tapCallerKey{}).(*caller); cl != nil {
		return cl, nil
	}
	cl, msg := c.authenticate(ctx)
	if cl == nil {
		return nil, c.refuse(ctx, refusedUnauthenticated, "", method, status.New(codes.Unauthenticated, msg))
	}
	markAuthenticated(ctx)
	return cl, nil
}

// spend spends n tokens of the caller's rate limit. When it cannot, it
// returns the refusal, and the delay after which they would be there (0
// when no wait would do).
func (c *Callers) spend(cl *caller, n int) (*status.Status, time.Duration) {
	now := c.now()
	if n > cl.limiter.Burst() && cl.limiter.Limit() != rate.Inf {
		// No wait would ever let it through: the batch, not the rate, is
		// wrong, so it is the caller's error and carries no RetryInfo.
		st := invalidArgument([]violation{{"notifications", fmt.Sprintf(
			"a batch of %d notifications is more than caller %q's burst of %d on this router; send batches of at most %d",
			n, cl.name, cl.limiter.Burst(), cl.limiter.Burst())}})
		return status.Convert(st), 0
	}
	r := cl.limiter.ReserveN(now, n)
	d := r.DelayFrom(now)
	if d <= 0 && r.OK() {
		return nil, 0
	}
	r.CancelAt(now)
	d = (d + time.Millisecond - 1).Truncate(time.Millisecond) // never hint too early
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(
		"router: caller %q is over its rate limit of %g calls/s (burst %d) on this router; retry in %v",
		cl.name, float64(cl.limiter.Limit()), cl.limiter.Burst(), d))
	if withRetry, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
		st = withRetry
	}
	return st, d
}

// retryPushbackHeader is the trailer in which a refusal tells a gRPC
// client's retry policy how many milliseconds to wait before it retries
// (gRFC A6).
const retryPushbackHeader = "grpc-retry-pushback-ms"

// refuse counts and logs a refusal and returns its status as an error.
func (c *Callers) refuse(ctx context.Context, reason, name, method string, st *status.Status, attrs ...slog.Attr) error {
	c.refused.WithLabelValues(reason).Inc()
	if c.logLimit.AllowN(c.now(), 1) {
		attrs = append(attrs, slog.String("reason", reason), slog.String("method", method))
		if reason != refusedPermissionDenied { // that message names the user in clear
			attrs = append(attrs, slog.String("detail", st.Message()))
		}
		if name != "" {
			attrs = append(attrs, slog.String("caller", name))
		}
		if p, ok := peer.FromContext(ctx); ok {
			attrs = append(attrs, slog.String("peer", p.Addr.String()))
		}
		c.log.LogAttrs(ctx, slog.LevelWarn, "call refused", attrs...)
	}
	return st.Err()
}
