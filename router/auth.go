package router

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// CallerConfig is one entry of the callers file: a backend service allowed
// to call the API, how it proves who it is, how fast it may call and what it
// may reach. Entries that share a name are one caller with several keys (a
// key rotation); they must agree on everything but KeySHA256 and Disabled.
type CallerConfig struct {
	// Name names the caller in logs and refusals; for mTLS it is the CN its
	// client certificate must carry.
	Name string `json:"name"`
	// KeySHA256 is the hex SHA-256 of the caller's API key (heraldctl
	// hash-key prints it). Empty: the caller authenticates by client
	// certificate only.
	KeySHA256 string `json:"key_sha256,omitempty"`
	// Rate is the calls per second the caller may make on each router, and
	// Burst how many above it at once. Rate 0 means no limit; Burst 0 means
	// one second's worth (at least 1).
	Rate  float64 `json:"rate,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// Users are the users the caller may Notify and register devices for:
	// exact ids, prefixes ending in "*" ("acme:*"), or "*". None: no user.
	Users []string `json:"users,omitempty"`
	// Topics are the topics the caller may Broadcast to: exact names,
	// prefixes ending in ".*" ("orders.*"), or "*". None: no topic.
	Topics []string `json:"topics,omitempty"`
	// AckDeadline, a Go duration ("3s"), is the ack deadline of the caller's
	// ack-or-push notifications that set none, instead of the router's.
	AckDeadline string `json:"ack_deadline,omitempty"`
	// Disabled refuses the entry's key (or, when every entry of the name is
	// disabled, the caller's certificate) without deleting the entry.
	Disabled bool `json:"disabled,omitempty"`
}

// AuthConfig configures publisher authentication.
type AuthConfig struct {
	// Callers are the callers allowed to use the API. None refuses every call
	// but health checking and reflection.
	Callers []CallerConfig
	// UserIDs says whether refusal logs show user ids or their hashes.
	UserIDs delivery.UserIDs
}

// AuthDeps are Callers' dependencies.
type AuthDeps struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives herald_router_auth_refused_total; nil registers
	// nothing.
	Registerer prometheus.Registerer
	// Now is the clock of the rate limits; nil means time.Now.
	Now func() time.Time
}

// Callers authenticates and authorises the API's callers, by API key or
// client certificate, and applies their rate limits, as gRPC interceptors.
type Callers struct {
	keys    []keyEntry         // every entry with a key, disabled ones too
	callers map[string]*caller // by name
	enabled map[string]bool    // names with at least one enabled entry
	userIDs delivery.UserIDs
	log     *slog.Logger
	now     func() time.Time
	refused *prometheus.CounterVec
	// logLimit bounds refusal log lines: a misbehaving caller must not
	// flood the logs. The metric counts every refusal.
	logLimit *rate.Limiter
}

// keyEntry is one API key of a caller.
type keyEntry struct {
	hash     [sha256.Size]byte
	caller   *caller
	disabled bool
}

// caller is one authenticated caller's limits and permissions.
type caller struct {
	name        string
	limiter     *rate.Limiter
	users       []string
	topics      []string
	ackDeadline time.Duration
}

// Refusal reasons, the values of herald_router_auth_refused_total's label.
const (
	refusedUnauthenticated  = "unauthenticated"
	refusedPermissionDenied = "permission_denied"
	refusedRateLimited      = "rate_limited"
)

// ReadCallersFile reads a callers file: a JSON array of CallerConfig.
// Unknown fields are an error, so that a misspelt permission is not ignored.
func ReadCallersFile(path string) ([]CallerConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("router: callers file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var cfgs []CallerConfig
	if err := dec.Decode(&cfgs); err != nil {
		return nil, fmt.Errorf("router: callers file %s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("router: callers file %s: trailing data after the JSON array", path)
	}
	if len(cfgs) == 0 {
		return nil, fmt.Errorf("router: callers file %s lists no callers", path)
	}
	return cfgs, nil
}

// NewCallers checks the callers and returns their interceptors' state.
func NewCallers(cfg AuthConfig, deps AuthDeps) (*Callers, error) {
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Callers{
		callers:  make(map[string]*caller),
		enabled:  make(map[string]bool),
		userIDs:  cfg.UserIDs,
		log:      deps.Logger,
		now:      deps.Now,
		logLimit: rate.NewLimiter(5, 20),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "auth_refused_total",
			Help: "API calls refused by publisher security: unauthenticated, permission_denied or rate_limited.",
		}, []string{"reason"}),
	}
	for _, r := range []string{refusedUnauthenticated, refusedPermissionDenied, refusedRateLimited} {
		c.refused.WithLabelValues(r)
	}
	first := make(map[string]CallerConfig)
	for i, cc := range cfg.Callers {
		cl, err := newCaller(cc)
		if err != nil {
			return nil, fmt.Errorf("router: caller %d (%q): %w", i+1, cc.Name, err)
		}
		if prev, ok := first[cc.Name]; !ok {
			first[cc.Name], c.callers[cc.Name] = cc, cl
		} else if !sameSettings(prev, cc) {
			return nil, fmt.Errorf("router: callers named %q differ in more than key_sha256 and disabled; "+
				"entries that share a name (a key rotation) must have the same rate, burst, users, topics and ack_deadline", cc.Name)
		}
		cl = c.callers[cc.Name] // entries of one name share one rate limit
		c.enabled[cc.Name] = c.enabled[cc.Name] || !cc.Disabled
		if cc.KeySHA256 == "" {
			continue
		}
		var e keyEntry
		if len(cc.KeySHA256) != hex.EncodedLen(sha256.Size) {
			return nil, fmt.Errorf("router: caller %q: key_sha256 must be 64 hex digits (heraldctl hash-key KEY prints them)", cc.Name)
		}
		if _, err := hex.Decode(e.hash[:], []byte(cc.KeySHA256)); err != nil {
			return nil, fmt.Errorf("router: caller %q: key_sha256 must be 64 hex digits (heraldctl hash-key KEY prints them)", cc.Name)
		}
		if slices.ContainsFunc(c.keys, func(k keyEntry) bool { return k.hash == e.hash }) {
			return nil, fmt.Errorf("router: caller %q: key_sha256 is already another entry's", cc.Name)
		}
		e.caller, e.disabled = cl, cc.Disabled
		c.keys = append(c.keys, e)
	}
	if deps.Registerer != nil {
		if err := deps.Registerer.Register(c.refused); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// sameSettings reports whether two entries of one name agree on everything
// but their key and whether they are disabled.
func sameSettings(a, b CallerConfig) bool {
	return a.Name == b.Name && a.Rate == b.Rate && a.Burst == b.Burst && a.AckDeadline == b.AckDeadline &&
		slices.Equal(a.Users, b.Users) && slices.Equal(a.Topics, b.Topics)
}

// newCaller checks one entry.
func newCaller(cc CallerConfig) (*caller, error) {
	if err := delivery.CheckText(cc.Name, 128); err != nil || cc.Name == "" {
		return nil, errors.New("name must be 1-128 bytes without control characters")
	}
	if cc.Rate < 0 || math.IsNaN(cc.Rate) || cc.Burst < 0 {
		return nil, errors.New("rate and burst must not be negative")
	}
	limit, burst := rate.Inf, cc.Burst
	if cc.Rate > 0 {
		limit = rate.Limit(cc.Rate)
		if burst == 0 {
			burst = max(1, int(math.Ceil(cc.Rate)))
		}
	}
	cl := &caller{name: cc.Name, limiter: rate.NewLimiter(limit, burst), users: cc.Users, topics: cc.Topics}
	for _, u := range cc.Users {
		if u == "" || strings.Contains(strings.TrimSuffix(u, "*"), "*") {
			return nil, fmt.Errorf("users pattern %q: want an exact user id, a prefix ending in *, or *", u)
		}
	}
	for _, t := range cc.Topics {
		if t != "*" && !delivery.ValidTopic(strings.TrimSuffix(t, ".*")) {
			return nil, fmt.Errorf("topics pattern %q: want an exact topic, a prefix ending in .*, or *", t)
		}
	}
	if cc.AckDeadline != "" {
		d, err := time.ParseDuration(cc.AckDeadline)
		if err != nil || d <= 0 || d > maxAckDeadline {
			return nil, fmt.Errorf("ack_deadline %q: want a duration above 0 and at most %v, such as \"3s\"", cc.AckDeadline, maxAckDeadline)
		}
		cl.ackDeadline = d
	}
	return cl, nil
}

// HashKey is the hex SHA-256 of an API key: what a callers file holds.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// callerKey is the context key of the authenticated caller's name.
type callerKey struct{}

// CallerFrom returns the name of the caller that made the call ctx belongs
// to, when the call was authenticated.
func CallerFrom(ctx context.Context) (string, bool) {
	name, ok := ctx.Value(callerKey{}).(string)
	return name, ok
}

// publicMethod reports whether a method is served without credentials:
// health checking (load balancer and Kubernetes probes) and reflection
// (grpcurl list), which reveal nothing but the API's shape.
func publicMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") || strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// tapCallerKey is the context key of the caller TapHandle authenticated.
type tapCallerKey struct{}

// TapHandle authenticates each call when its headers arrive, before gRPC
// reads its request: an unauthenticated caller is refused UNAUTHENTICATED
// without one byte of its message being read or decoded, whatever its size
// or content. Install it with grpc.InTapHandle next to the interceptors,
// which then reuse its result. It runs on the connection's reader, so it
// does no I/O: a hash and a comparison per configured key.
func (c *Callers) TapHandle() tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if publicMethod(info.FullMethodName) {
			return ctx, nil
		}
		cl, msg := c.authenticate(ctx)
		if cl == nil {
			return nil, c.refuse(ctx, refusedUnauthenticated, "", info.FullMethodName, status.New(codes.Unauthenticated, msg))
		}
		return context.WithValue(ctx, tapCallerKey{}, cl), nil
	}
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

// StreamInterceptor authenticates streaming calls other than health and
// reflection, and refuses them: the API has no streaming method, and one
// added later must say what it permits before callers can use it.
func (c *Callers) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if publicMethod(info.FullMethod) {
			return handler(srv, ss)
		}
		cl, err := c.admit(ss.Context(), info.FullMethod, 1)
		if err != nil {
			return err
		}
		return c.authorize(ss.Context(), cl, info.FullMethod, nil)
	}
}

// admit authenticates a call and spends n tokens of its caller's rate
// limit: one for a call, one per notification for a batch.
func (c *Callers) admit(ctx context.Context, method string, n int) (*caller, error) {
	cl, _ := ctx.Value(tapCallerKey{}).(*caller)
	if cl == nil {
		var msg string
		if cl, msg = c.authenticate(ctx); cl == nil {
			return nil, c.refuse(ctx, refusedUnauthenticated, "", method, status.New(codes.Unauthenticated, msg))
		}
	}
	now := c.now()
	if n > cl.limiter.Burst() && cl.limiter.Limit() != rate.Inf {
		// No wait would ever let it through: the batch, not the rate, is
		// wrong, so it is the caller's error and carries no RetryInfo.
		st := invalidArgument([]violation{{"notifications", fmt.Sprintf(
			"a batch of %d notifications is more than caller %q's burst of %d on this router; send batches of at most %d",
			n, cl.name, cl.limiter.Burst(), cl.limiter.Burst())}})
		return nil, c.refuse(ctx, refusedRateLimited, cl.name, method, status.Convert(st))
	}
	r := cl.limiter.ReserveN(now, n)
	if d := r.DelayFrom(now); d > 0 || !r.OK() {
		r.CancelAt(now)
		d = (d + time.Millisecond - 1).Truncate(time.Millisecond) // never hint too early
		st := status.New(codes.ResourceExhausted, fmt.Sprintf(
			"router: caller %q is over its rate limit of %g calls/s (burst %d) on this router; retry in %v",
			cl.name, float64(cl.limiter.Limit()), cl.limiter.Burst(), d))
		if withRetry, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
			st = withRetry
		}
		return nil, c.refuse(ctx, refusedRateLimited, cl.name, method, st)
	}
	return cl, nil
}

// authenticate finds the caller of a call: by its client certificate when
// the connection has a verified one, otherwise by its API key. On failure
// it returns the message the caller is told.
func (c *Callers) authenticate(ctx context.Context) (*caller, string) {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			cn := ti.State.VerifiedChains[0][0].Subject.CommonName
			cl, ok := c.callers[cn]
			switch {
			case !ok:
				return nil, fmt.Sprintf("router: client certificate CN %q is not a caller in the router's callers file", cn)
			case !c.enabled[cn]:
				return nil, fmt.Sprintf("router: caller %q is disabled", cn)
			}
			return cl, ""
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return nil, `router: no credentials: send the API key as gRPC metadata "authorization: Bearer <key>", or connect with a client certificate`
	case len(vals) > 1:
		return nil, "router: more than one authorization header"
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	key = strings.TrimSpace(key)
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return nil, `router: malformed authorization header: want "Bearer <API key>"`
	}
	h := sha256.Sum256([]byte(key))
	var found *keyEntry
	for i := range c.keys { // constant time in the key, whichever entry matches
		if subtle.ConstantTimeCompare(h[:], c.keys[i].hash[:]) == 1 {
			found = &c.keys[i]
		}
	}
	switch {
	case found == nil:
		return nil, "router: API key not recognised"
	case found.disabled:
		return nil, fmt.Sprintf("router: this API key of caller %q is disabled", found.caller.name)
	}
	return found.caller, ""
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
		if topic == "" || topicAllowed(topic, cl.topics) {
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

// topicAllowed reports whether topic matches a pattern: an exact name, a
// prefix ending in ".*", or "*", as the edge matches its tokens' topics.
func topicAllowed(topic string, allowed []string) bool {
	for _, p := range allowed {
		if p == "*" || p == topic || (strings.HasSuffix(p, ".*") && strings.HasPrefix(topic, p[:len(p)-1])) {
			return true
		}
	}
	return false
}

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

// CallerLogHandler wraps a log handler so that each line logged with the
// context of an authenticated call carries the attribute "caller": the
// router's "notify failed" and "broadcast failed" lines name who called.
func CallerLogHandler(h slog.Handler) slog.Handler { return callerHandler{h} }

type callerHandler struct{ slog.Handler }

func (h callerHandler) Handle(ctx context.Context, r slog.Record) error {
	if name, ok := CallerFrom(ctx); ok {
		r.AddAttrs(slog.String("caller", name))
	}
	return h.Handler.Handle(ctx, r)
}

func (h callerHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return callerHandler{h.Handler.WithAttrs(as)}
}

func (h callerHandler) WithGroup(name string) slog.Handler {
	return callerHandler{h.Handler.WithGroup(name)}
}

// ServerTLS is the TLS configuration of the router's listener, from PEM
// files. With clientCAFile, clients that present a certificate must present
// one signed by that CA (mTLS, the CN naming the caller); clients without
// one may still authenticate with an API key.
func ServerTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("router: TLS needs both a certificate and its key (-tls-cert and -tls-key)")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("router: TLS certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("router: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("router: client CA %s holds no PEM certificate", clientCAFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}
