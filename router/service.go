// Package router is Herald's gRPC front door: it validates Notify calls,
// looks the user up in the presence registry and routes each notification
// to the online path (Redis Pub/Sub to the SSE edges) or the offline path.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/redact"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Config configures a Service. The zero value of each field means the
// documented default.
type Config struct {
	// MaxPayloadBytes is the largest data a Notify may carry. Default 64 KiB:
	// SSE events are meant to be small "something changed" signals, and one
	// large event delays every event behind it on the connection.
	MaxPayloadBytes int
	// DefaultTTL applies when a Notify sets no TTL. Default 1 hour: a
	// "re-fetch now" signal is worthless after that.
	DefaultTTL time.Duration
	// ShutdownTimeout bounds GracefulStop before Serve falls back to Stop.
	// Default 10s, below the usual 30s termination grace period.
	ShutdownTimeout time.Duration
	// UserIDs says whether logs show user ids or their hashes (the default).
	UserIDs redact.UserIDs
	// AckDeadline is the ack deadline of an ack-or-push notification that
	// sets none. Default 5s: a live connection's client acks within a
	// second; a dead one's user gets the push a few seconds late.
	AckDeadline time.Duration

	// The gRPC server's limits, each per connection or in total, so that no
	// caller, authenticated or not, can make the router hold more
	// (docs/security.md). Zero means the default named in limits.go.

	// MaxHeaderBytes bounds a call's metadata. Default DefaultMaxHeaderBytes
	// (8 KiB).
	MaxHeaderBytes int
	// MaxRequestBytes bounds one request message, and so a NotifyBatch's
	// bytes; a larger request is refused INVALID_ARGUMENT. Default
	// DefaultMaxRequestBytes (4 MiB). It must hold the largest valid Notify.
	MaxRequestBytes int
	// MaxStreamsPerConn bounds the calls in flight on one connection.
	// Default DefaultMaxStreamsPerConn (100).
	MaxStreamsPerConn int
	// MaxConns bounds the open connections. At it, a new connection
	// closes the oldest open one that has never carried an authenticated
	// call (one Callers admitted, or any call but Health/Check under
	// NoAuth); when every one has, the new connection is closed as it is
	// accepted. Default DefaultMaxConns (1024).
	MaxConns int
	// MaxConnsPerIP bounds the open connections from one client address
	// (IPv6: its /64); more are closed as they are accepted. Default
	// DefaultMaxConnsPerIP (64); negative: no bound per address.
	MaxConnsPerIP int
	// HandshakeTimeout closes a connection whose TLS and HTTP/2 handshakes
	// take longer. Default DefaultHandshakeTimeout (10s).
	HandshakeTimeout time.Duration
	// KeepaliveMinTime is the shortest ping interval a client may use.
	// Default DefaultKeepaliveMinTime (10s).
	KeepaliveMinTime time.Duration
	// MaxConnIdle closes a connection without calls for this long. Default
	// DefaultMaxConnIdle (5m).
	MaxConnIdle time.Duration
	// StreamMaxInFlight bounds the notifications of one NotifyStream read
	// and not yet answered: the stream is not read further until one is
	// answered. Default DefaultStreamMaxInFlight (64); at most 1024.
	StreamMaxInFlight int
	// StreamIdleTimeout ends, with OK, a NotifyStream that has had nothing
	// in flight and received nothing for this long. Default
	// DefaultStreamIdleTimeout (5m).
	StreamIdleTimeout time.Duration
}

// Defaults of Config's service fields, as documented on each field.
const (
	// DefaultMaxPayloadBytes is Config.MaxPayloadBytes' default (64 KiB).
	DefaultMaxPayloadBytes = 64 << 10
	// DefaultNotifyTTL is Config.DefaultTTL's default (1 hour).
	DefaultNotifyTTL = time.Hour
	// DefaultShutdownTimeout is Config.ShutdownTimeout's default (10s).
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultAckDeadline is Config.AckDeadline's default (5s).
	DefaultAckDeadline = 5 * time.Second
)

// maxAckDeadline bounds a Notify's ack deadline.
const maxAckDeadline = time.Hour

// Publisher routes envelopes. *delivery.Publisher implements it.
type Publisher interface {
	Publish(ctx context.Context, env *heraldv1.Envelope, idempotencyKey string) (delivery.Result, error)
	Broadcast(ctx context.Context, env *heraldv1.Envelope) (delivery.Result, error)
}

var _ Publisher = (*delivery.Publisher)(nil)

// DeviceRegistry stores users' FCM tokens. *devices.Registry implements it.
type DeviceRegistry interface {
	Register(ctx context.Context, user, token, platform string) (devices, evicted int, err error)
	Unregister(ctx context.Context, user string, tokens ...string) (int, error)
}

var _ DeviceRegistry = (*devices.Registry)(nil)

// Deps are a Service's dependencies.
type Deps struct {
	Publisher Publisher
	// Devices serves RegisterDevice and UnregisterDevice; nil answers them
	// Unimplemented (a router without an offline path).
	Devices DeviceRegistry
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the router's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TracerProvider, when set, traces the RouterService's calls with
	// otelgrpc, continuing a caller's W3C trace context, and each Notify's
	// validation ("herald.validate"). Nil, the default, traces nothing. The
	// publisher's spans are its own (delivery.PublisherConfig).
	TracerProvider trace.TracerProvider
}

// Service implements heraldv1.RouterServiceServer.
type Service struct {
	heraldv1.UnimplementedRouterServiceServer

	cfg     Config
	pub     Publisher
	devices DeviceRegistry
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics
	health  *health.Server
	tp      trace.TracerProvider
	tracer  trace.Tracer // nil: tracing off

	// draining is closed when Serve begins its graceful stop: each
	// NotifyStream stops reading, answers what it has read and ends.
	draining  chan struct{}
	drainOnce sync.Once
}

var _ heraldv1.RouterServiceServer = (*Service)(nil)

// New returns a Service.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.Publisher == nil {
		return nil, errors.New("router: a publisher is required")
	}
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultNotifyTTL
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.AckDeadline == 0 {
		cfg.AckDeadline = DefaultAckDeadline
	}
	if cfg.AckDeadline < 0 || cfg.AckDeadline > maxAckDeadline {
		return nil, fmt.Errorf("router: ack deadline %v is not within (0, %v]", cfg.AckDeadline, maxAckDeadline)
	}
	if cfg.MaxPayloadBytes < 0 || cfg.DefaultTTL < 0 || cfg.DefaultTTL > maxTTL || cfg.ShutdownTimeout < 0 {
		return nil, fmt.Errorf("router: invalid config %+v", cfg)
	}
	if err := cfg.applyLimitDefaults(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg:     cfg,
		pub:     deps.Publisher,
		devices: deps.Devices,
		log:     deps.Logger,
		now:     deps.Now,
		metrics: m,
		health:  health.NewServer(),
		tp:      deps.TracerProvider,
		tracer:  newTracer(deps.TracerProvider),

		draining: make(chan struct{}),
	}, nil
}

// correlationHeader is the gRPC metadata key a caller may set to have its own
// id carried with the notification.
const correlationHeader = "x-correlation-id"

// Notify routes one notification to one user.
func (s *Service) Notify(ctx context.Context, req *heraldv1.NotifyRequest) (*heraldv1.NotifyResponse, error) {
	return s.notify(ctx, req, correlationID(ctx))
}

// notify validates, routes and answers one notification: a Notify call's,
// or one of a NotifyStream's. ctx is its call's, and carries its caller.
func (s *Service) notify(ctx context.Context, req *heraldv1.NotifyRequest, correlation string) (resp *heraldv1.NotifyResponse, err error) {
	start := s.now()
	defer func() { s.metrics.observe(resp, err, s.now().Sub(start)) }()

	if s.tracer != nil {
		_, span := s.tracer.Start(ctx, "herald.validate")
		err = s.validate(req)
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		span.End()
	} else {
		err = s.validate(req)
	}
	if err != nil {
		return nil, err
	}
	env, mode := s.notifyEnvelope(start, req, correlation)
	res, err := s.pub.Publish(ctx, env, idempotencyKey(ctx, req.GetIdempotencyKey()))
	if err != nil {
		return nil, s.notifyFailed(ctx, env, err)
	}
	return s.notifyResponse(ctx, env, mode, res), nil
}

// correlationID is the caller's correlation id from the call's metadata,
// or "" when it sent none or an invalid one.
func correlationID(ctx context.Context) string {
	// ValueFromIncomingContext reads the one key; FromIncomingContext
	// would copy every header of the call first.
	if v := metadata.ValueFromIncomingContext(ctx, correlationHeader); len(v) > 0 && delivery.CheckText(v[0], maxIdempotencyKeyBytes) == nil {
		return v[0]
	}
	return ""
}

// notifyEnvelope is the envelope of a valid NotifyRequest accepted at
// start, with the delivery mode the router applies.
func (s *Service) notifyEnvelope(start time.Time, req *heraldv1.NotifyRequest, correlation string) (*heraldv1.Envelope, heraldv1.DeliveryMode) {
	env := s.envelope(start, req.GetEvent(), req.GetData(), req.GetTtl())
	env.UserId, env.Push, env.CorrelationId = req.GetUserId(), req.GetPush(), correlation
	mode := heraldv1.DeliveryMode_DELIVERY_MODE_FIRE_AND_FORGET
	if req.GetDeliveryMode() == heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH {
		mode = req.GetDeliveryMode()
		d := s.cfg.AckDeadline
		if req.GetAckDeadline() != nil {
			d = req.GetAckDeadline().AsDuration()
		}
		env.AckBy = timestamppb.New(start.Add(d))
	}
	return env, mode
}

// notifyFailed counts and logs a notification the publisher failed to
// route, and returns the status its caller gets.
func (s *Service) notifyFailed(ctx context.Context, env *heraldv1.Envelope, err error) error {
	s.metrics.countError(err)
	s.log.LogAttrs(ctx, slog.LevelWarn, "notify failed",
		slog.String("notification_id", env.Id), slog.String("route", "none"), s.cfg.UserIDs.Attr(env.UserId),
		slog.String("correlation_id", env.CorrelationId), slog.Any("err", err))
	return toStatus(ctx, err)
}

// notifyResponse is the response for a routed notification.
func (s *Service) notifyResponse(ctx context.Context, env *heraldv1.Envelope, mode heraldv1.DeliveryMode, res delivery.Result) *heraldv1.NotifyResponse {
	resp := &heraldv1.NotifyResponse{
		NotificationId: res.ID,
		EventId:        res.EventID,
		Subscribers:    int32(res.Subscribers),
		Duplicate:      res.Duplicate,
		AcceptedAt:     timestamppb.New(res.AcceptedAt),
		DeliveryMode:   appliedMode(mode, res),
	}
	switch {
	case res.Route == delivery.RouteOnline:
		resp.Route = heraldv1.Route_ROUTE_ONLINE
	case res.Queued:
		resp.Route = heraldv1.Route_ROUTE_PUSH_QUEUED
	default:
		resp.Route = heraldv1.Route_ROUTE_OFFLINE
	}
	resp.StalePresence = res.Route == delivery.RouteStale
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "notify",
			slog.String("notification_id", res.ID),
			slog.String("route", routeLabel(resp)),
			s.cfg.UserIDs.Attr(env.UserId),
			slog.Int("subscribers", res.Subscribers),
			slog.Bool("duplicate", res.Duplicate),
			slog.String("correlation_id", env.CorrelationId))
	}
	return resp
}

// envelope starts the envelope of a call accepted at start.
func (s *Service) envelope(start time.Time, event string, data []byte, ttl *durationpb.Duration) *heraldv1.Envelope {
	d := s.cfg.DefaultTTL
	if ttl != nil {
		d = ttl.AsDuration()
	}
	return &heraldv1.Envelope{
		Id:         delivery.NewID(start),
		Event:      event,
		Data:       data,
		AcceptedAt: timestamppb.New(start),
		ExpiresAt:  timestamppb.New(start.Add(d)),
	}
}

// Broadcast fans one message out to every subscriber of a topic.
func (s *Service) Broadcast(ctx context.Context, req *heraldv1.BroadcastRequest) (*heraldv1.BroadcastResponse, error) {
	start := s.now()
	if err := s.validateBroadcast(req); err != nil {
		s.metrics.broadcasts.WithLabelValues(status.Code(err).String()).Inc()
		return nil, err
	}
	env := s.envelope(start, req.GetEvent(), req.GetData(), req.GetTtl())
	env.Topic = req.GetTopic()
	res, err := s.pub.Broadcast(ctx, env)
	if err != nil {
		s.metrics.countError(err)
		err = toStatus(ctx, err)
		s.metrics.broadcasts.WithLabelValues(status.Code(err).String()).Inc()
		s.log.LogAttrs(ctx, slog.LevelWarn, "broadcast failed",
			slog.String("notification_id", env.Id), slog.Any("err", err))
		return nil, err
	}
	s.metrics.broadcasts.WithLabelValues(codes.OK.String()).Inc()
	return &heraldv1.BroadcastResponse{
		NotificationId: res.ID,
		EventId:        res.EventID,
		Subscribers:    int32(res.Subscribers),
		AcceptedAt:     timestamppb.New(res.AcceptedAt),
	}, nil
}

// RegisterDevice records a user's FCM token.
func (s *Service) RegisterDevice(ctx context.Context, req *heraldv1.RegisterDeviceRequest) (*heraldv1.RegisterDeviceResponse, error) {
	if s.devices == nil {
		return nil, status.Error(codes.Unimplemented, "router: this router has no offline path, so no device registry")
	}
	vs := checkDevice(req.GetUserId(), req.GetToken())
	platform, ok := platformNames[req.GetPlatform()]
	if !ok {
		vs = append(vs, violation{"platform", "must be PLATFORM_ANDROID, PLATFORM_IOS or PLATFORM_WEB"})
	}
	if len(vs) > 0 {
		return nil, invalidArgument(vs)
	}
	n, evicted, err := s.devices.Register(ctx, req.GetUserId(), req.GetToken(), platform)
	if err != nil {
		s.metrics.countError(err)
		return nil, toStatus(ctx, err)
	}
	s.metrics.devices.WithLabelValues("registered").Inc()
	s.metrics.devices.WithLabelValues("evicted").Add(float64(evicted))
	return &heraldv1.RegisterDeviceResponse{Devices: int32(n), Evicted: int32(evicted)}, nil
}

// checkDevice validates the user and token of a device call.
func checkDevice(user, token string) []violation {
	vs := checkText(nil, "user_id", user, delivery.MaxUserIDBytes, true)
	if err := devices.CheckToken(token); err != nil {
		vs = append(vs, violation{"token", err.Error()})
	}
	return vs
}

// platformNames are the registry's names of the proto's platforms.
var platformNames = map[heraldv1.Platform]string{
	heraldv1.Platform_PLATFORM_ANDROID: "android",
	heraldv1.Platform_PLATFORM_IOS:     "ios",
	heraldv1.Platform_PLATFORM_WEB:     "web",
}

// UnregisterDevice forgets a user's FCM token.
func (s *Service) UnregisterDevice(ctx context.Context, req *heraldv1.UnregisterDeviceRequest) (*heraldv1.UnregisterDeviceResponse, error) {
	if s.devices == nil {
		return nil, status.Error(codes.Unimplemented, "router: this router has no offline path, so no device registry")
	}
	if vs := checkDevice(req.GetUserId(), req.GetToken()); len(vs) > 0 {
		return nil, invalidArgument(vs)
	}
	n, err := s.devices.Unregister(ctx, req.GetUserId(), req.GetToken())
	if err != nil {
		s.metrics.countError(err)
		return nil, toStatus(ctx, err)
	}
	s.metrics.devices.WithLabelValues("unregistered").Add(float64(n))
	return &heraldv1.UnregisterDeviceResponse{Removed: n > 0}, nil
}

// toStatus maps an error from the routing path to the gRPC status the caller
// sees. It is the one place where Herald's errors become status codes.
func toStatus(ctx context.Context, err error) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	var offline *delivery.OfflineError
	switch {
	case errors.Is(err, delivery.ErrInFlight):
		return status.Error(codes.Unavailable, "router: a call with this idempotency_key is still being routed; retry in a few seconds with the same key")
	case errors.Is(err, delivery.ErrNoReceipts):
		return status.Error(codes.FailedPrecondition, "router: "+err.Error()+"; send fire-and-forget, or run the router with its offline path")
	case errors.Is(err, devices.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &offline) && ctx.Err() == nil:
		// Kafka did not acknowledge the write: the notification is not
		// queued, and no idempotency record claims it is.
		return status.Error(codes.Unavailable, "router: offline queue (Kafka) unavailable; the notification was not queued; retry with the same idempotency_key")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded:
		return status.Error(codes.DeadlineExceeded, "router: deadline exceeded before the notification was routed")
	case errors.Is(err, context.Canceled) || ctx.Err() == context.Canceled:
		return status.Error(codes.Canceled, "router: call canceled before the notification was routed")
	default:
		// Redis is unreachable or failed. A timeout may come after Redis
		// ran the script (docs/reliability.md, "Redis stalls"): the retry
		// with the same idempotency key finds what it did.
		return status.Error(codes.Unavailable, "router: routing backend unavailable; retry with the same idempotency_key")
	}
}

// Serve serves the RouterService, gRPC health checking and server reflection
// on lis until ctx is done, then stops gracefully, falling back to a hard
// stop after ShutdownTimeout. The Config's limits apply; opts add to them.
func (s *Service) Serve(ctx context.Context, lis net.Listener, opts ...grpc.ServerOption) error {
	lis = newLimitListener(lis, s.cfg.MaxConns, s.cfg.MaxConnsPerIP,
		s.metrics.connsRefused.WithLabelValues("per_ip"), s.metrics.connsRefused.WithLabelValues("total"), s.metrics.connsEvicted)
	codec := newDeferringCodec(s.cfg.MaxRequestBytes)
	opts = append(s.cfg.serverOptions(codec), opts...)
	if o := tracingOption(s.tp); o != nil {
		opts = append(opts, o)
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(codec.deferDecodeErrors(heraldv1.RouterService_ServiceDesc), s)
	healthpb.RegisterHealthServer(srv, s.health)
	reflection.Register(srv)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(heraldv1.RouterService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("router: serve: %w", err)
	case <-ctx.Done():
	}
	s.health.Shutdown()
	// GracefulStop waits for every call, and a NotifyStream does not end
	// by itself: tell the streams to finish what they have read and end.
	s.drainOnce.Do(func() { close(s.draining) })
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("graceful stop timed out; stopping", slog.Duration("timeout", s.cfg.ShutdownTimeout))
		srv.Stop()
		<-stopped
	}
	<-errc
	return nil
}
