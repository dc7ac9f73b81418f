package router_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// fakeClock is the rate limits' clock, moved by the test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// authRouter is a router served with the auth interceptors, over real Redis,
// with an offline queue that records what it takes.
type authRouter struct {
	addr    string
	client  heraldv1.RouterServiceClient
	rdb     *redis.Client
	prefix  string
	pres    *presence.Registry
	metrics *prometheus.Registry
	logs    *syncBuffer
	clock   *fakeClock
	queued  atomic.Int32
	failQ   atomic.Bool
}

func newAuthRouter(tb testing.TB, callers []router.CallerConfig, opts ...grpc.ServerOption) *authRouter {
	tb.Helper()
	return newAuthRouterConfig(tb, router.Config{}, router.AuthConfig{Callers: callers}, opts...)
}

// newAuthRouterConfig is newAuthRouter with the router's and the
// authentication's configuration.
func newAuthRouterConfig(tb testing.TB, cfg router.Config, acfg router.AuthConfig, opts ...grpc.ServerOption) *authRouter {
	tb.Helper()
	r := &authRouter{metrics: prometheus.NewPedanticRegistry(), logs: &syncBuffer{}, clock: &fakeClock{now: time.Unix(1e9, 0)}}
	r.rdb, r.prefix = testenv.Redis(tb)
	var err error
	if r.pres, err = presence.New(r.rdb, presence.Config{Prefix: r.prefix, LeaseTTL: 5 * time.Second}); err != nil {
		tb.Fatal(err)
	}
	q := queueFunc(func(*heraldv1.Envelope) error {
		if r.failQ.Load() {
			return os.ErrDeadlineExceeded
		}
		r.queued.Add(1)
		return nil
	})
	pub, err := delivery.NewPublisher(r.rdb, r.pres, delivery.PublisherConfig{
		Offline: q, Receipts: receipts.New(r.rdb, receipts.Config{Prefix: r.prefix}),
	})
	if err != nil {
		tb.Fatal(err)
	}
	devices, err := devices.New(r.rdb, devices.Config{Prefix: r.prefix})
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(router.CallerLogHandler(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	svc, err := router.New(cfg, router.Deps{Publisher: pub, Devices: devices, Logger: log, Registerer: r.metrics})
	if err != nil {
		tb.Fatal(err)
	}
	auth, err := router.NewCallers(acfg, router.AuthDeps{Logger: log, Registerer: r.metrics, Now: r.clock.Now})
	if err != nil {
		tb.Fatal(err)
	}
	opts = append(opts, grpc.InTapHandle(auth.TapHandle()),
		grpc.ChainUnaryInterceptor(auth.UnaryInterceptor()), grpc.ChainStreamInterceptor(auth.StreamInterceptor()))
	srv := testenv.Serve(tb, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis, opts...) })
	r.addr = srv.Addr
	r.client = heraldv1.NewRouterServiceClient(testenv.GRPCClient(tb, srv.Addr))
	return r
}

// refused is herald_router_auth_refused_total{reason}.
func (r *authRouter) refused(tb testing.TB, reason string) float64 {
	tb.Helper()
	mfs, err := r.metrics.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "herald_router_auth_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	tb.Fatalf("herald_router_auth_refused_total{reason=%q} is not registered", reason)
	return 0
}

// online leases presence for user and subscribes to the user's channel, as
// an edge would.
func (r *authRouter) online(tb testing.TB, user string) *redis.PubSub {
	tb.Helper()
	return testenv.Online(tb, r.rdb, r.pres, user)
}

func withKey(key string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
}

const (
	ordersKey    = "hk_orders_3f9a1c77e0b24d"
	ordersNewKey = "hk_orders_rotated_8b21"
	oldKey       = "hk_retired_key"
)

func TestHashKey(t *testing.T) {
	if got := router.HashKey("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("HashKey(abc) = %s", got)
	}
}

// TestAuthAPIKeys: calls without a key, with a wrong, malformed or disabled
// one are Unauthenticated and counted; both keys of a caller in rotation
// work, and the caller's name is in the router's log lines.
func TestAuthAPIKeys(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "orders-service", KeySHA256: router.HashKey(ordersKey), Users: []string{"*"}},
		{Name: "orders-service", KeySHA256: strings.ToUpper(router.HashKey(ordersNewKey)), Users: []string{"*"}},
		{Name: "orders-service", KeySHA256: router.HashKey(oldKey), Users: []string{"*"}, Disabled: true},
	})
	req := &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}
	cases := []struct {
		name string
		ctx  context.Context
		msg  string
	}{
		{"no key", context.Background(), "no credentials"},
		{"wrong key", withKey("hk_guessed"), "not recognised"},
		{"not bearer", metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic "+ordersKey), "malformed"},
		{"empty bearer", metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "), "malformed"},
		{"disabled key", withKey(oldKey), "disabled"},
	}
	for _, tc := range cases {
		_, err := r.client.Notify(tc.ctx, req)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%s: %v, want Unauthenticated saying %q", tc.name, err, tc.msg)
		}
	}
	if n := r.refused(t, "unauthenticated"); n != float64(len(cases)) {
		t.Errorf("refused{unauthenticated} = %v, want %d", n, len(cases))
	}
	if r.queued.Load() != 0 {
		t.Fatalf("%d notifications queued by unauthenticated calls", r.queued.Load())
	}

	for _, key := range []string{ordersKey, ordersNewKey} {
		if _, err := r.client.Notify(withKey(key), req); err != nil {
			t.Fatalf("key %s: %v", key, err)
		}
	}
	if r.queued.Load() != 2 {
		t.Fatalf("queued %d, want both authenticated calls", r.queued.Load())
	}
	r.failQ.Store(true)
	if _, err := r.client.Notify(withKey(ordersKey), req); status.Code(err) != codes.Unavailable {
		t.Fatalf("queue down: %v, want Unavailable", err)
	}
	var debug, failed bool
	for _, line := range strings.Split(r.logs.String(), "\n") {
		debug = debug || strings.Contains(line, `"msg":"notify"`) && strings.Contains(line, `"caller":"orders-service"`)
		failed = failed || strings.Contains(line, `"msg":"notify failed"`) && strings.Contains(line, `"caller":"orders-service"`)
	}
	if !debug || !failed {
		t.Fatalf("logs do not name the caller on the notify and notify failed lines:\n%s", r.logs.String())
	}
	if !strings.Contains(r.logs.String(), `"msg":"call refused"`) || !strings.Contains(r.logs.String(), `"reason":"unauthenticated"`) {
		t.Fatalf("refusals are not logged:\n%s", r.logs.String())
	}
}

// TestAuthRateLimit: past its burst a caller is refused ResourceExhausted
// with the limit and a retry hint, and is served again once the bucket has
// refilled; another caller is not affected.
func TestAuthRateLimit(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "chatty", KeySHA256: router.HashKey("k-chatty"), Rate: 10, Burst: 2, Users: []string{"*"}},
		{Name: "quiet", KeySHA256: router.HashKey("k-quiet"), Users: []string{"*"}},
	})
	req := &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}
	for i := range 2 {
		if _, err := r.client.Notify(withKey("k-chatty"), req); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	_, err := r.client.Notify(withKey("k-chatty"), req)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "10 calls/s (burst 2)") ||
		!strings.Contains(st.Message(), "retry in 100ms") {
		t.Fatalf("over the limit: %v, want ResourceExhausted naming the limit and the retry delay", err)
	}
	var hint time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			hint = ri.GetRetryDelay().AsDuration()
		}
	}
	if hint != 100*time.Millisecond {
		t.Fatalf("RetryInfo delay %v, want 100ms", hint)
	}
	if _, err := r.client.Notify(withKey("k-quiet"), req); err != nil {
		t.Fatalf("another caller: %v", err)
	}
	r.clock.Advance(hint)
	if _, err := r.client.Notify(withKey("k-chatty"), req); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
	if n := r.refused(t, "rate_limited"); n != 1 {
		t.Fatalf("refused{rate_limited} = %v, want 1", n)
	}
}

// TestAuthPermissions: a caller reaches only the users and topics its
// patterns allow; anything else is PermissionDenied, names what was refused,
// and routes nothing.
func TestAuthPermissions(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{
		Name: "orders-service", KeySHA256: router.HashKey(ordersKey),
		Users: []string{"acme:*", "ops"}, Topics: []string{"orders.*", "status"},
	}})
	ctx := withKey(ordersKey)
	for _, u := range []string{"acme:42", "ops"} {
		if _, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: u, Data: []byte("x")}); err != nil {
			t.Fatalf("Notify %s: %v", u, err)
		}
	}
	for _, topic := range []string{"orders.created", "orders.eu.paid", "status"} {
		if _, err := r.client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: topic, Data: []byte("x")}); err != nil {
			t.Fatalf("Broadcast %s: %v", topic, err)
		}
	}
	if _, err := r.client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: "acme:42", Token: "tok-1",
		Platform: heraldv1.Platform_PLATFORM_WEB}); err != nil {
		t.Fatalf("RegisterDevice acme:42: %v", err)
	}
	queued := r.queued.Load()

	denied := []struct {
		name string
		call func() error
		want string
	}{
		{"notify", func() error {
			_, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "mallory", Data: []byte("x")})
			return err
		}, `may not notify user "mallory"`},
		{"notify just outside the prefix", func() error {
			_, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "acme", Data: []byte("x")})
			return err
		}, `may not notify user "acme"`},
		{"register device", func() error {
			_, err := r.client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: "mallory", Token: "tok-2",
				Platform: heraldv1.Platform_PLATFORM_WEB})
			return err
		}, `may not register devices for user "mallory"`},
		{"unregister device", func() error {
			_, err := r.client.UnregisterDevice(ctx, &heraldv1.UnregisterDeviceRequest{UserId: "bob", Token: "tok-1"})
			return err
		}, `may not unregister devices of user "bob"`},
		{"broadcast", func() error {
			_, err := r.client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: "payroll.run", Data: []byte("x")})
			return err
		}, `may not broadcast to topic "payroll.run" (its topics: orders.*, status)`},
		{"broadcast to the prefix itself", func() error {
			_, err := r.client.Broadcast(ctx, &heraldv1.BroadcastRequest{Topic: "orders", Data: []byte("x")})
			return err
		}, `may not broadcast to topic "orders"`},
	}
	for _, tc := range denied {
		st := status.Convert(tc.call())
		if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), tc.want) {
			t.Errorf("%s: %v %q, want PermissionDenied saying %q", tc.name, st.Code(), st.Message(), tc.want)
		}
	}
	if n := r.refused(t, "permission_denied"); n != float64(len(denied)) {
		t.Errorf("refused{permission_denied} = %v, want %d", n, len(denied))
	}
	// Nothing was routed: not queued, and no key of mallory's or of the
	// payroll topic in Redis (no history, no idempotency record, no device).
	if r.queued.Load() != queued {
		t.Errorf("refused calls queued %d notifications", r.queued.Load()-queued)
	}
	for _, pattern := range []string{"*mallory*", "*payroll*", "*{t:orders}*"} {
		if keys, err := r.rdb.Keys(context.Background(), r.prefix+pattern).Result(); err != nil || len(keys) > 0 {
			t.Errorf("Redis keys %s: %v %v, want none", pattern, keys, err)
		}
	}
	// The refusal log names the caller and hashes the user.
	logs := r.logs.String()
	if !strings.Contains(logs, `"reason":"permission_denied"`) || !strings.Contains(logs, redact.HashUser("mallory")) ||
		strings.Contains(logs, "mallory\"") {
		t.Errorf("refusal logs should carry the user's hash, not the id:\n%s", logs)
	}
	// An empty user is the handler's to refuse, as InvalidArgument.
	if _, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{Data: []byte("x")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty user: %v, want InvalidArgument", err)
	}
}

// TestAuthPublicMethods: the unary health check needs no credentials;
// health's Watch and reflection, streams a client may hold open for ever,
// are refused UNAUTHENTICATED without them and served with them.
func TestAuthPublicMethods(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "ops", KeySHA256: router.HashKey("k1")}})
	conn := testenv.GRPCClient(t, r.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: heraldv1.RouterService_ServiceDesc.ServiceName})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check without credentials: %v, %v", resp, err)
	}
	// listServices opens a reflection stream on ctx and lists the services.
	listServices := func(ctx context.Context) (string, error) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return "", err
		}
		defer stream.CloseSend()
		// A refused stream's Send fails io.EOF; Recv has its status.
		_ = stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		list, err := stream.Recv()
		return list.String(), err
	}
	// watch opens a health Watch on ctx and reads its first status.
	watch := func(ctx context.Context) (healthpb.HealthCheckResponse_ServingStatus, error) {
		stream, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return 0, err
		}
		resp, err := stream.Recv()
		return resp.GetStatus(), err
	}

	if _, err := listServices(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("reflection without credentials: %v, want Unauthenticated", err)
	}
	if _, err := watch(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("health Watch without credentials: %v, want Unauthenticated", err)
	}
	if n := r.refused(t, "unauthenticated"); n != 2 {
		t.Errorf("auth_refused_total{unauthenticated} = %v, want 2", n)
	}

	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer k1")
	if list, err := listServices(authed); err != nil || !strings.Contains(list, heraldv1.RouterService_ServiceDesc.ServiceName) {
		t.Errorf("reflection with credentials: %v, %s; want the router service listed", err, list)
	}
	if st, err := watch(authed); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health Watch with credentials: %v, %v; want SERVING", st, err)
	}
	if _, err := r.client.Notify(authed, &heraldv1.NotifyRequest{UserId: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Notify by a caller with no users: %v, want PermissionDenied", err)
	}
}

// TestAuthStreamInterceptor: a streaming method other than NotifyStream,
// health's Watch and reflection is refused even to an authenticated caller,
// as no permission rule covers it; health's Watch needs credentials.
func TestAuthStreamInterceptor(t *testing.T) {
	auth, err := router.NewCallers(router.AuthConfig{Callers: []router.CallerConfig{
		{Name: "svc", KeySHA256: router.HashKey("k"), Users: []string{"*"}},
	}}, router.AuthDeps{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer k"))
	called := false
	handler := func(any, grpc.ServerStream) error { called = true; return nil }
	err = auth.StreamInterceptor()(nil, fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/herald.v1.RouterService/Watch"}, handler)
	if status.Code(err) != codes.PermissionDenied || called {
		t.Fatalf("unknown streaming method: %v (handler called: %v), want PermissionDenied", err, called)
	}
	err = auth.StreamInterceptor()(nil, fakeStream{ctx: context.Background()}, &grpc.StreamServerInfo{FullMethod: "/grpc.health.v1.Health/Watch"}, handler)
	if status.Code(err) != codes.Unauthenticated || called {
		t.Fatalf("health Watch without credentials: %v (handler called: %v), want Unauthenticated", err, called)
	}
	err = auth.StreamInterceptor()(nil, fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/grpc.health.v1.Health/Watch"}, handler)
	if err != nil || !called {
		t.Fatalf("health Watch with credentials: %v (handler called: %v), want it served", err, called)
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

// TestAuthAckDeadline: a caller's ack_deadline applies to its ack-or-push
// notifications that set none; one the call sets wins, and callers without
// one get the router's.
func TestAuthAckDeadline(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "trading", KeySHA256: router.HashKey("k-trading"), Users: []string{"*"}, AckDeadline: "3s"},
		{Name: "plain", KeySHA256: router.HashKey("k-plain"), Users: []string{"*"}},
	})
	ps := r.online(t, "alice")
	ack := heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH
	cases := []struct {
		key  string
		req  *heraldv1.NotifyRequest
		want time.Duration
	}{
		{"k-trading", &heraldv1.NotifyRequest{UserId: "alice", DeliveryMode: ack}, 3 * time.Second},
		{"k-trading", &heraldv1.NotifyRequest{UserId: "alice", DeliveryMode: ack, AckDeadline: durationpb.New(7 * time.Second)}, 7 * time.Second},
		{"k-plain", &heraldv1.NotifyRequest{UserId: "alice", DeliveryMode: ack}, 5 * time.Second},
		{"k-trading", &heraldv1.NotifyRequest{UserId: "alice"}, 0}, // fire-and-forget: none
	}
	for i, tc := range cases {
		resp, err := r.client.Notify(withKey(tc.key), tc.req)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		msg, err := ps.ReceiveMessage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		env, err := delivery.Unmarshal([]byte(msg.Payload))
		if err != nil || env.GetId() != resp.GetNotificationId() {
			t.Fatalf("case %d: published %v (%v), want %s", i, env, err, resp.GetNotificationId())
		}
		var got time.Duration
		if env.GetAckBy() != nil {
			got = env.GetAckBy().AsTime().Sub(env.GetAcceptedAt().AsTime())
		}
		if got != tc.want {
			t.Errorf("case %d: ack deadline %v, want %v", i, got, tc.want)
		}
	}
}

// testCA is a certificate authority made up for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(tb testing.TB, name string) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate for cn signed by the CA, for a server on
// 127.0.0.1 or for a client, as PEM.
func (ca *testCA) issue(tb testing.TB, cn string, server bool) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeFile writes b to a file of the test's and returns its path.
func writeFile(tb testing.TB, name string, b []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestAuthMTLS: a client certificate signed by the client CA authenticates
// the caller its CN names; an unknown CN is Unauthenticated, and a
// certificate from another CA fails the handshake. Clients without a
// certificate may still use an API key on the same listener.
func TestAuthMTLS(t *testing.T) {
	ca, other := newTestCA(t, "herald test CA"), newTestCA(t, "someone else's CA")
	srvCert, srvKey := ca.issue(t, "router", true)
	tlsCfg, err := router.ServerTLS(writeFile(t, "router.pem", srvCert), writeFile(t, "router-key.pem", srvKey),
		writeFile(t, "clients-ca.pem", ca.pem))
	if err != nil {
		t.Fatal(err)
	}
	r := newAuthRouter(t, []router.CallerConfig{
		{Name: "billing", Users: []string{"*"}},
		{Name: "orders-service", KeySHA256: router.HashKey(ordersKey), Users: []string{"*"}},
		{Name: "retired", Users: []string{"*"}, Disabled: true},
	}, grpc.Creds(credentials.NewTLS(tlsCfg)))

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	dial := func(certs ...tls.Certificate) heraldv1.RouterServiceClient {
		conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: roots, Certificates: certs})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return heraldv1.NewRouterServiceClient(conn)
	}
	pair := func(ca *testCA, cn string) tls.Certificate {
		c, err := tls.X509KeyPair(ca.issue(t, cn, false))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	req := &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}
	ctx := context.Background()

	if _, err := dial(pair(ca, "billing")).Notify(ctx, req); err != nil {
		t.Fatalf("known CN: %v", err)
	}
	if !strings.Contains(r.logs.String(), `"caller":"billing"`) {
		t.Errorf("logs do not name the certificate's caller:\n%s", r.logs.String())
	}
	for cn, want := range map[string]string{"stranger": `CN "stranger" is not a caller`, "retired": "disabled"} {
		_, err := dial(pair(ca, cn)).Notify(ctx, req)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), want) {
			t.Errorf("CN %s: %v, want Unauthenticated saying %q", cn, err, want)
		}
	}
	// Go's client sends no certificate that the server's CA list does not
	// cover; one forced on the server fails the handshake.
	foreign := pair(other, "billing")
	if _, err := dial(foreign).Notify(ctx, req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("certificate from another CA: %v, want Unauthenticated (the client sends none)", err)
	}
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := heraldv1.NewRouterServiceClient(conn).Notify(ctx, req); status.Code(err) != codes.Unavailable {
		t.Errorf("certificate from another CA, forced: %v, want the handshake to fail (Unavailable)", err)
	}
	if _, err := dial().Notify(withKey(ordersKey), req); err != nil {
		t.Fatalf("API key over TLS without a client certificate: %v", err)
	}
	if _, err := dial().Notify(ctx, req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("TLS without certificate or key: %v, want Unauthenticated", err)
	}
}

func TestNewCallersRejects(t *testing.T) {
	good := router.CallerConfig{Name: "a", KeySHA256: router.HashKey("k"), Users: []string{"*"}}
	with := func(f func(*router.CallerConfig)) []router.CallerConfig {
		c := good
		f(&c)
		return []router.CallerConfig{c}
	}
	cases := map[string][]router.CallerConfig{
		"empty name":         with(func(c *router.CallerConfig) { c.Name = "" }),
		"short hash":         with(func(c *router.CallerConfig) { c.KeySHA256 = "abc" }),
		"long hash":          with(func(c *router.CallerConfig) { c.KeySHA256 += "00" }),
		"not hex":            with(func(c *router.CallerConfig) { c.KeySHA256 = strings.Repeat("g", 64) }),
		"negative rate":      with(func(c *router.CallerConfig) { c.Rate = -1 }),
		"star inside user":   with(func(c *router.CallerConfig) { c.Users = []string{"a*b"} }),
		"topic star no dot":  with(func(c *router.CallerConfig) { c.Topics = []string{"orders*"} }),
		"bad ack deadline":   with(func(c *router.CallerConfig) { c.AckDeadline = "2h" }),
		"duplicate key":      {good, {Name: "b", KeySHA256: good.KeySHA256}},
		"rotation disagrees": {good, {Name: "a", KeySHA256: router.HashKey("k2"), Users: []string{"x"}}},
	}
	for name, callers := range cases {
		if _, err := router.NewCallers(router.AuthConfig{Callers: callers}, router.AuthDeps{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReadCallersFile(t *testing.T) {
	path := writeFile(t, "callers.json", []byte(`[
  {"name": "orders-service", "key_sha256": "`+router.HashKey("k")+`", "rate": 500, "burst": 1000,
   "users": ["*"], "topics": ["orders.*"], "ack_deadline": "3s"}
]`))
	cfgs, err := router.ReadCallersFile(path)
	if err != nil || len(cfgs) != 1 || cfgs[0].Rate != 500 || cfgs[0].Topics[0] != "orders.*" || cfgs[0].AckDeadline != "3s" {
		t.Fatalf("ReadCallersFile = %+v, %v", cfgs, err)
	}
	for name, text := range map[string]string{
		"unknown field": `[{"name": "a", "user": ["*"]}]`,
		"empty":         `[]`,
		"not an array":  `{"name": "a"}`,
		"trailing":      `[{"name": "a"}] x`,
	} {
		if _, err := router.ReadCallersFile(writeFile(t, "callers.json", []byte(text))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
