// Package sseedge is Herald's SSE edge: it holds clients' Server-Sent Events
// connections, keeps their presence in Redis, and writes each notification
// published for a user to every one of that user's connections.
package sseedge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
)

// Config configures a Server. The zero value of each field means the
// documented default, except JWTSecret, which is required.
type Config struct {
	// EdgeID names this edge in presence entries and logs. Default: the host
	// name and a random suffix, so that a restarted edge is a new edge.
	EdgeID string
	// JWTSecret is the HS256 key that client tokens are signed with. Required.
	JWTSecret []byte
	// JWTIssuer and JWTAudience, when set, must match the token's iss and aud.
	JWTIssuer   string
	JWTAudience string
	// ClockSkew is the leeway allowed on exp, nbf and iat. Default 0: clocks
	// are assumed to be synchronised.
	ClockSkew time.Duration
	// Heartbeat is how often an idle stream gets a comment line. Default 15s,
	// below the 30-60s idle timeouts of common proxies and load balancers.
	Heartbeat time.Duration
	// Retry is the reconnection delay sent to clients in a retry: field.
	// Default 2s: quick enough to feel live, slow enough not to hammer an edge
	// that is restarting.
	Retry time.Duration
	// QueueSize is how many events may wait for a slow connection before it
	// is closed as slow_consumer. Default 64.
	QueueSize int
	// WriteTimeout bounds each write to a client. Default 10s.
	WriteTimeout time.Duration
	// SubscribeTimeout bounds the wait for Redis to confirm a new user's
	// subscription. Default 5s.
	SubscribeTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers, against slowloris.
	// Default 5s.
	ReadHeaderTimeout time.Duration
	// DrainPeriod is the time over which a shutting-down edge closes its
	// streams, spread evenly so that clients do not all reconnect at once.
	// Default 5s.
	DrainPeriod time.Duration
}

// Deps are a Server's dependencies.
type Deps struct {
	// Redis carries the Pub/Sub subscription. Required.
	Redis redis.UniversalClient
	// Presence is where connections are leased. Required. Its key prefix is
	// also the prefix of the Pub/Sub channels.
	Presence *presence.Registry
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the edge's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is an SSE edge.
type Server struct {
	cfg      Config
	rdb      redis.UniversalClient
	presence *presence.Registry
	log      *slog.Logger
	now      func() time.Time
	auth     *authenticator
	metrics  *metrics

	hubMu    sync.Mutex
	hub      *hub // set by Serve
	draining atomic.Bool
	handlers sync.WaitGroup
}

// New returns a Server.
func New(cfg Config, deps Deps) (*Server, error) {
	if len(cfg.JWTSecret) == 0 {
		return nil, errors.New("sseedge: a JWT secret is required")
	}
	if deps.Redis == nil || deps.Presence == nil {
		return nil, errors.New("sseedge: a redis client and a presence registry are required")
	}
	if cfg.EdgeID == "" {
		host, _ := os.Hostname()
		cfg.EdgeID = host + "-" + randomHex(3)
	}
	setDefault(&cfg.Heartbeat, 15*time.Second)
	setDefault(&cfg.Retry, 2*time.Second)
	setDefault(&cfg.WriteTimeout, 10*time.Second)
	setDefault(&cfg.SubscribeTimeout, 5*time.Second)
	setDefault(&cfg.ReadHeaderTimeout, 5*time.Second)
	setDefault(&cfg.DrainPeriod, 5*time.Second)
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 64
	}
	if cfg.QueueSize < 0 || cfg.Heartbeat < 0 || cfg.Retry < 0 || cfg.WriteTimeout < 0 ||
		cfg.SubscribeTimeout < 0 || cfg.ReadHeaderTimeout < 0 || cfg.DrainPeriod < 0 {
		return nil, fmt.Errorf("sseedge: negative value in config")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Server{
		cfg:      cfg,
		rdb:      deps.Redis,
		presence: deps.Presence,
		log:      deps.Logger.With(slog.String("edge", cfg.EdgeID)),
		now:      deps.Now,
		auth:     newAuthenticator(cfg),
	}
	m, err := newMetrics(deps.Registerer, func() float64 {
		if h := s.currentHub(); h != nil {
			return float64(h.subscriptions())
		}
		return 0
	})
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

func (s *Server) currentHub() *hub {
	s.hubMu.Lock()
	defer s.hubMu.Unlock()
	return s.hub
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// EdgeID is the edge's id in presence entries.
func (s *Server) EdgeID() string { return s.cfg.EdgeID }

// handler returns the edge's HTTP routes: GET /v1/events, the event stream.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/events", s.handleEvents)
	return mux
}

// Serve serves the edge on lis until ctx is done, then drains: it refuses new
// streams, closes the open ones spread over DrainPeriod with reason
// server_drain, and removes their presence.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	h := newHub(ctx, s.rdb, s.presence.Prefix(), s.log, s.deliver)
	s.hubMu.Lock()
	if s.hub != nil {
		s.hubMu.Unlock()
		return errors.New("sseedge: Serve called twice")
	}
	s.hub = h
	s.hubMu.Unlock()

	hs := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hubCtx, stopHub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHub()
	var hubDone sync.WaitGroup
	hubDone.Go(func() { _ = h.run(hubCtx) })

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("sseedge: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error { s.renewLoop(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		s.drain(context.WithoutCancel(gctx), hs)
		return nil
	})
	err := g.Wait()
	stopHub()
	// Closing the Pub/Sub connection ends a receive blocked on the network.
	_ = h.ps.Close()
	hubDone.Wait()
	return err
}

// drain stops accepting streams and closes the open ones, spread over the
// drain period, then shuts the HTTP server down.
func (s *Server) drain(ctx context.Context, hs *http.Server) {
	s.draining.Store(true)
	streams := s.hub.all()
	s.log.Info("draining", slog.Int("streams", len(streams)), slog.Duration("period", s.cfg.DrainPeriod))
	if n := len(streams); n > 0 {
		step := s.cfg.DrainPeriod / time.Duration(n)
		for i, st := range streams {
			if i > 0 && step > 0 {
				time.Sleep(step)
			}
			st.close(CloseServerDrain)
		}
	}
	// Streams that were mid-handshake when the drain began see the draining
	// flag and close themselves; close any stragglers too.
	for _, st := range s.hub.all() {
		st.close(CloseServerDrain)
	}
	shutdownCtx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout+time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		s.log.Warn("http shutdown", slog.Any("err", err))
		_ = hs.Close()
	}
	s.handlers.Wait()
}

// renewLoop renews the leases of every local stream until ctx is done.
func (s *Server) renewLoop(ctx context.Context) {
	t := time.NewTicker(s.presence.RenewInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		streams := s.hub.all()
		const batch = 500
		for len(streams) > 0 {
			n := min(batch, len(streams))
			conns := make([]presence.Conn, n)
			for i, st := range streams[:n] {
				conns[i] = st.conn
			}
			streams = streams[n:]
			if err := s.presence.Lease(ctx, conns...); err != nil && ctx.Err() == nil {
				s.metrics.presenceErrors.Inc()
				s.log.Warn("presence renewal failed", slog.Any("err", err))
			}
		}
	}
}

// deliver hands one published envelope to every local stream of user. It
// never blocks: a stream whose queue is full is closed as slow_consumer.
func (s *Server) deliver(user string, payload []byte) {
	env, err := delivery.Unmarshal(payload)
	if err != nil {
		s.metrics.dropped.WithLabelValues("malformed").Inc()
		s.log.Warn("dropping malformed envelope", slog.Any("err", err))
		return
	}
	if exp := env.GetExpiresAt(); exp != nil && exp.AsTime().Before(s.now()) {
		s.metrics.dropped.WithLabelValues("expired").Inc()
		return
	}
	ev := &outEvent{
		id:       env.GetId(),
		frame:    appendEvent(nil, env.GetId(), env.GetEvent(), string(env.GetData())),
		accepted: env.GetAcceptedAt().AsTime(),
	}
	for _, st := range s.hub.streamsOf(user) {
		if !st.offer(ev) {
			st.close(CloseSlowConsumer)
		}
	}
}

// writeError answers a refused request with a status and a JSON body
// {"error": code, "message": text}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

// handleEvents serves GET /v1/events.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	if s.draining.Load() {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "draining", "this edge is shutting down; reconnect to another")
		return
	}
	claims, err := s.auth.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	}

	ctx := r.Context()
	st := newStream(claims.Subject, s.cfg.EdgeID, s.now(), s.cfg.QueueSize)
	joinCtx, cancel := context.WithTimeout(ctx, s.cfg.SubscribeTimeout)
	err = s.hub.join(joinCtx, st)
	cancel()
	cleanupCtx := context.WithoutCancel(ctx)
	if err != nil {
		s.log.Warn("subscribe failed", slog.Any("err", err))
		s.refuse(w, http.StatusServiceUnavailable, "broker_unavailable", "the edge could not subscribe in Redis; retry")
		return
	}
	if err := s.presence.Lease(ctx, st.conn); err != nil {
		s.hub.leave(cleanupCtx, st)
		s.metrics.presenceErrors.Inc()
		s.log.Warn("presence lease failed", slog.Any("err", err))
		s.refuse(w, http.StatusServiceUnavailable, "broker_unavailable", "the edge could not register presence in Redis; retry")
		return
	}

	s.metrics.open.Inc()
	// The first reason wins: a stream closed as slow_consumer whose blocked
	// write then times out is counted as slow_consumer, once.
	st.close(s.stream(ctx, w, st, claims.ExpiresAt.Time))
	reason := st.reason
	s.metrics.open.Dec()
	s.metrics.closed.WithLabelValues(string(reason)).Inc()
	s.metrics.duration.Observe(s.now().Sub(st.conn.Since).Seconds())

	s.hub.leave(cleanupCtx, st)
	rmCtx, cancel := context.WithTimeout(cleanupCtx, 2*time.Second)
	defer cancel()
	if err := s.presence.Remove(rmCtx, st.conn); err != nil {
		// The lease expires by itself within its TTL.
		s.metrics.presenceErrors.Inc()
		s.log.Warn("presence remove failed", slog.Any("err", err))
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "stream closed",
			slog.String("conn", st.conn.ID), slog.String("reason", string(reason)))
	}
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.metrics.refused.WithLabelValues(code).Inc()
	writeError(w, status, code, msg)
}

// stream writes st's events to w until the stream ends, and says why. It is
// the only writer of w.
func (s *Server) stream(ctx context.Context, w http.ResponseWriter, st *stream, expires time.Time) CloseReason {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(b []byte) CloseReason {
		_ = rc.SetWriteDeadline(s.now().Add(s.cfg.WriteTimeout))
		_, err := w.Write(b)
		if err == nil {
			err = rc.Flush()
		}
		switch {
		case err == nil:
			return ""
		case errors.Is(err, os.ErrDeadlineExceeded):
			return CloseWriteTimeout
		case ctx.Err() != nil:
			return CloseClientClosed
		default:
			return CloseWriteError
		}
	}
	buf := appendRetry(nil, s.cfg.Retry)
	buf = appendComment(buf, "connected "+st.conn.ID)
	if reason := write(buf); reason != "" {
		return reason
	}
	if s.draining.Load() {
		// The drain began while this stream was joining.
		return CloseServerDrain
	}

	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	expiry := time.NewTimer(expires.Sub(s.now()))
	defer expiry.Stop()
	var pending []*outEvent
	for {
		select {
		case <-ctx.Done():
			return CloseClientClosed
		case <-st.done:
			return st.reason
		case <-expiry.C:
			return CloseTokenExpired
		case <-heartbeat.C:
			if reason := write(appendComment(buf[:0], "hb")); reason != "" {
				return reason
			}
		case ev := <-st.queue:
			// Write whatever else is already queued in the same flush.
			buf, pending = buf[:0], append(pending[:0], ev)
			buf = append(buf, ev.frame...)
		more:
			for len(pending) < 32 {
				select {
				case ev := <-st.queue:
					pending = append(pending, ev)
					buf = append(buf, ev.frame...)
				default:
					break more
				}
			}
			if reason := write(buf); reason != "" {
				return reason
			}
			now := s.now()
			for _, ev := range pending {
				s.metrics.latency.Observe(now.Sub(ev.accepted).Seconds())
			}
			s.metrics.written.Add(float64(len(pending)))
			heartbeat.Reset(s.cfg.Heartbeat)
		}
	}
}

// outEvent is one event ready to write, shared by every stream of its user.
type outEvent struct {
	id       string
	frame    []byte
	accepted time.Time
}

// stream is one client connection's state outside its handler.
type stream struct {
	user  string
	conn  presence.Conn
	queue chan *outEvent
	done  chan struct{}
	once  sync.Once
	// reason is written once, before done is closed.
	reason CloseReason
}

func newStream(user, edge string, now time.Time, queueSize int) *stream {
	return &stream{
		user:  user,
		conn:  presence.Conn{User: user, ID: randomHex(8), Edge: edge, Since: now},
		queue: make(chan *outEvent, queueSize),
		done:  make(chan struct{}),
	}
}

// offer queues ev without blocking; false means the queue is full.
func (st *stream) offer(ev *outEvent) bool {
	select {
	case st.queue <- ev:
		return true
	default:
		return false
	}
}

// close ends the stream with reason; only the first call counts.
func (st *stream) close(reason CloseReason) {
	st.once.Do(func() {
		st.reason = reason
		close(st.done)
	})
}

// Ready reports whether the edge should receive new clients: it is not
// draining, and Redis answers.
func (s *Server) Ready(ctx context.Context) error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}
