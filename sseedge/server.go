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
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
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
// documented default; at least one token key (JWTSecret, JWTPublicKeyFile or
// JWTJWKS) is required.
type Config struct {
	// EdgeID names this edge in presence entries and logs. Default: the host
	// name and a random suffix, so that a restarted edge is a new edge.
	EdgeID string
	// JWTSecret is the HS256 key that client tokens are signed with. HS256
	// tokens are accepted only when it is set.
	JWTSecret []byte
	// JWTPublicKeyFile names a PEM file of public keys (PUBLIC KEY, RSA
	// PUBLIC KEY or CERTIFICATE blocks), read once by New: RSA keys of 2048
	// bits or more verify RS256 tokens, P-256 keys ES256 tokens, whatever
	// their kid.
	JWTPublicKeyFile string
	// JWTJWKS is a JSON Web Key Set (RFC 7517) of RSA and P-256 keys: a file
	// path or an http(s) URL. A token's kid selects the key. It is read when
	// Serve starts (failing it, if it cannot be), every JWKSRefresh after,
	// and at most once a minute when a token names a kid it lacks; a failed
	// read keeps the last good set.
	JWTJWKS string
	// JWKSRefresh is how often the JWKS is read again. Default 5m: a new key
	// is usually found through its unknown kid anyway, and a removed one
	// stops working within this.
	JWKSRefresh time.Duration
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
	// is closed as slow_consumer. Default 64. It bounds a catch-up from
	// history too: a stream holds at most QueueSize events of it, and at
	// most QueueSize × 16 KiB past one event per stream it reads.
	QueueSize int
	// MaxQueuedBytes is the most event data the edge holds for all its
	// streams together: events queued for slow clients and pages of
	// catch-ups from history. Past it, the streams holding the most are
	// closed as slow_consumer until it is within it again. Default 256 MiB:
	// a few hundred slow streams at their full queue, well within an edge's
	// memory.
	MaxQueuedBytes int64
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
	// Default 30s, the usual Kubernetes termination grace period.
	DrainPeriod time.Duration
	// MaxConnsPerUser is the most streams one user may hold on this edge.
	// At the limit a new stream is accepted and the user's oldest is closed
	// with reason replaced: the newest tab or device wins. Default 10.
	MaxConnsPerUser int
	// MaxConns is the most streams this edge holds; beyond it, requests get
	// 503 so the load balancer tries another edge. Default 10000, within a
	// process's usual file limit.
	MaxConns int
	// MaxConnsPerIP is the most streams (counting requests being
	// authenticated) one client address may hold on this edge; beyond it,
	// requests get 429 too_many_connections. IPv6 addresses count by /64,
	// what one host usually gets. Default 1000: an office or carrier NAT
	// puts hundreds of users, each with a few tabs, behind one address;
	// one host alone still cannot take the edge's MaxConns. Negative
	// disables the limit.
	MaxConnsPerIP int
	// TrustedProxies are the addresses of the proxies or load balancers in
	// front of the edge. A request from one of them is counted against the
	// client address in its X-Forwarded-For header (the rightmost address
	// not itself a trusted proxy). Default none: the peer address counts.
	TrustedProxies []netip.Prefix
	// MaxTopics is the most topics one stream may read. Default 16.
	MaxTopics int
	// TopicsClaim is the token claim listing the topics a client may read:
	// exact names, or prefixes ending in ".*" ("chat.*"), or "*". Default
	// "topics".
	TopicsClaim string
	// AllowedOrigins lists the origins browsers may connect from (CORS);
	// "*" allows any. Default none: same-origin pages only.
	AllowedOrigins []string
	// UserIDs says whether logs show user ids or their hashes (the default).
	UserIDs delivery.UserIDs
	// NoTrail stops the edge from counting its writes in notifications'
	// trails (heraldctl trace), which costs one pipelined Redis command per
	// notification per flush.
	NoTrail bool
	// BrokerGrace is how long streams survive a lost Redis Pub/Sub
	// connection before they are closed as broker_lost. Default 30s: a Redis
	// restart or failover does not drop clients; they catch up from history
	// when the link returns.
	BrokerGrace time.Duration
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
	// History reads the streams' histories for Last-Event-ID recovery.
	// Default: a history on Redis with the default bounds.
	History *delivery.History
	// Pages, if set, serves every path other than /v1/events (for example a
	// demo page at /).
	Pages http.Handler
	// HTTPClient fetches an http(s) JWTJWKS. Default http.DefaultClient;
	// each fetch is bounded to 10s.
	HTTPClient *http.Client
}

// Server is an SSE edge.
type Server struct {
	cfg      Config
	rdb      redis.UniversalClient
	presence *presence.Registry
	trail    *trail // nil with NoTrail
	receipts *delivery.Receipts
	remover  *remover
	log      *slog.Logger
	now      func() time.Time
	auth     *authenticator
	metrics  *metrics
	history  *delivery.History
	pages    http.Handler
	budget   *budget // of the bytes held for all streams

	hubMu sync.Mutex
	hub   *hub // set by Serve
	// writers serve the HTTP/1.1 streams taken over from net/http; set by
	// Serve, nil where streams stay on their handler goroutines.
	writers  *writers
	draining atomic.Bool
	handlers sync.WaitGroup
	// opening counts the requests that passed the MaxConns check and whose
	// stream has not joined the hub yet, so that concurrent opens cannot all
	// pass it on the same count.
	opening atomic.Int64

	ipMu  sync.Mutex
	perIP map[netip.Prefix]int // streams and requests in flight by client address
}

// New returns a Server.
func New(cfg Config, deps Deps) (*Server, error) {
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
	setDefault(&cfg.DrainPeriod, 30*time.Second)
	setDefault(&cfg.BrokerGrace, 30*time.Second)
	setDefault(&cfg.JWKSRefresh, 5*time.Minute)
	setDefaultInt(&cfg.MaxConnsPerIP, 1000)
	setDefaultInt(&cfg.QueueSize, 64)
	if cfg.MaxQueuedBytes == 0 {
		cfg.MaxQueuedBytes = 256 << 20
	}
	setDefaultInt(&cfg.MaxConnsPerUser, 10)
	setDefaultInt(&cfg.MaxConns, 10000)
	setDefaultInt(&cfg.MaxTopics, 16)
	if cfg.TopicsClaim == "" {
		cfg.TopicsClaim = "topics"
	}
	if cfg.QueueSize < 0 || cfg.Heartbeat < 0 || cfg.Retry < 0 || cfg.WriteTimeout < 0 ||
		cfg.SubscribeTimeout < 0 || cfg.ReadHeaderTimeout < 0 || cfg.DrainPeriod < 0 ||
		cfg.MaxConnsPerUser < 0 || cfg.MaxConns < 0 || cfg.MaxTopics < 0 || cfg.BrokerGrace < 0 ||
		cfg.JWKSRefresh < 0 || cfg.MaxQueuedBytes < 0 {
		return nil, fmt.Errorf("sseedge: negative value in config")
	}
	if deps.History == nil {
		h, err := delivery.NewHistory(deps.Redis, deps.Presence.Prefix(), delivery.HistoryConfig{})
		if err != nil {
			return nil, err
		}
		deps.History = h
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.HTTPClient == nil {
		deps.HTTPClient = http.DefaultClient
	}
	auth, err := newAuthenticator(cfg, deps.HTTPClient, deps.Now, deps.Logger)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		rdb:      deps.Redis,
		presence: deps.Presence,
		trail:    newTrail(deps.Redis, deps.Presence.Prefix()),
		remover:  newRemover(deps.Presence),
		receipts: delivery.NewReceipts(deps.Redis, delivery.ReceiptsConfig{Prefix: deps.Presence.Prefix()}),
		log:      deps.Logger.With(slog.String("edge", cfg.EdgeID)),
		now:      deps.Now,
		auth:     auth,
		history:  deps.History,
		pages:    deps.Pages,
		perIP:    make(map[netip.Prefix]int),
		budget:   newBudget(cfg.MaxQueuedBytes),
	}
	if cfg.NoTrail {
		s.trail = nil
	}
	m, err := newMetrics(deps.Registerer, func() float64 {
		if h := s.currentHub(); h != nil {
			return float64(h.subscriptions())
		}
		return 0
	}, func() linkState {
		if h := s.currentHub(); h != nil {
			return h.ps.state()
		}
		return linkState{}
	}, func() float64 { return float64(s.budget.used.Load()) })
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

func setDefaultInt(n *int, def int) {
	if *n == 0 {
		*n = def
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// EdgeID is the edge's id in presence entries.
func (s *Server) EdgeID() string { return s.cfg.EdgeID }

// handler returns the edge's HTTP routes: GET /v1/events, the event stream,
// and the pages, if any.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/events", s.handleEvents)
	mux.HandleFunc("/v1/ack", s.handleAck)
	if s.pages != nil {
		mux.Handle("/", s.pages)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.RequestURI) > maxRequestURI {
			s.refuse(w, http.StatusRequestURITooLong, "uri_too_long", fmt.Sprintf("the URL is over %d bytes", maxRequestURI))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// maxRequestURI bounds a request's URL, as common proxies do: a token, 16
// topics and a cursor fit in it. Longer request lines, or headers over
// maxHeaderBytes, get 431 from the HTTP server itself.
const maxRequestURI = 8 << 10

// maxHeaderBytes bounds a request's line and headers: room for a token, a
// cursor and the usual cookies.
const maxHeaderBytes = 16 << 10

// idleTimeout closes keep-alive connections that carry no request.
const idleTimeout = 2 * time.Minute

// Serve serves the edge on lis until ctx is done, then drains: it refuses new
// streams and closes the open ones spread over DrainPeriod with reason
// server_drain. It speaks HTTP/1.1 and, without TLS, HTTP/2 (h2c), so that a
// browser is not held to six streams per origin. On Linux, with a TCP
// listener, an HTTP/1.1 stream is taken over from net/http once open, so
// that an idle one costs no goroutine (see writers).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if err := s.auth.loadKeys(ctx); err != nil {
		return err
	}
	h := newHub(ctx, s.rdb, s.log, s.cfg.BrokerGrace, s.cfg.SubscribeTimeout, s.deliver, s.brokerLost)
	hubCtx, stopHub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHub()
	s.hubMu.Lock()
	if s.hub != nil {
		s.hubMu.Unlock()
		_ = h.ps.Close()
		return errors.New("sseedge: Serve called twice")
	}
	s.hub = h
	// Connections from a TCP listener are taken over; TLS connections, or
	// those of another listener, cannot be written to directly.
	if _, ok := lis.(*net.TCPListener); ok {
		if p, err := newPoller(s.log); err == nil {
			s.writers = newWriters(hubCtx, s, p)
		} else {
			s.log.Info("streams are served one goroutine each", slog.Any("err", err))
		}
	}
	s.hubMu.Unlock()

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       idleTimeout,
		Protocols:         protocols,
		ErrorLog:          newServerLog(s.log, s.metrics.acceptErrors),
	}
	var hubDone sync.WaitGroup
	hubDone.Go(func() { _ = h.run(hubCtx) })
	if s.writers != nil {
		// The writers stop after the drain, which ends their streams.
		hubDone.Go(s.writers.run)
	}
	hubDone.Go(func() { s.auth.refreshKeys(hubCtx) })

	g, gctx := errgroup.WithContext(ctx)
	// The edge's record outlives serving, like the hub: it shows the drain.
	hubDone.Go(func() { s.announce(gctx, hubCtx, h, lis.Addr()) })
	g.Go(func() error {
		if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("sseedge: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error { s.renewLoop(gctx, h); return nil })
	if s.trail != nil {
		hubDone.Go(func() { s.trail.run(hubCtx) })
	}
	hubDone.Go(func() { s.remover.run(hubCtx) })
	hubDone.Go(func() { s.enforceBudget(hubCtx) })
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
// drain period, then shuts the HTTP server down. Each stream's lease is
// removed as it closes, so notifications keep reaching the streams still
// open; a closed client reconnects (to another edge) and recovers what was
// published meanwhile from history.
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

// brokerLost closes every stream when the Pub/Sub link has been down for
// longer than BrokerGrace: the clients reconnect, possibly to another edge,
// and recover from history.
func (s *Server) brokerLost() {
	streams := s.hub.all()
	s.log.Error("redis pub/sub down beyond the grace period; closing streams",
		slog.Duration("grace", s.cfg.BrokerGrace), slog.Int("streams", len(streams)))
	for _, st := range streams {
		st.close(CloseBrokerLost)
	}
}

// renewLoop renews the leases of every local stream until ctx is done, and
// at once when the Redis link comes back (a restarted Redis may have lost
// them, or they expired during the outage). A renewal that fails after a
// relink is tried again with backoff rather than at the next tick: until it
// succeeds, the router counts this edge's users as offline and pushes.
func (s *Server) renewLoop(ctx context.Context, h *hub) {
	t := time.NewTicker(s.presence.RenewInterval())
	defer t.Stop()
	retry := time.NewTimer(0)
	if !retry.Stop() {
		<-retry.C
	}
	defer retry.Stop()
	var backoff time.Duration
	for {
		relinked := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.relinked:
			relinked, backoff = true, 0
		case <-retry.C:
			relinked = true
		}
		if err := s.renewAll(ctx, h); err != nil && relinked && ctx.Err() == nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), s.presence.RenewInterval())
			retry.Reset(backoff)
		}
	}
}

// renewAll renews the leases of every local stream, in batches, and returns
// the last error.
func (s *Server) renewAll(ctx context.Context, h *hub) error {
	var last error
	streams := h.all()
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
			last = err
		}
	}
	return last
}

// decode turns a published or recorded envelope into an event ready to
// write, or nil (counted) when it is malformed or expired.
func (s *Server) decode(channel string, payload []byte) *outEvent {
	env, err := delivery.Unmarshal(payload)
	var eid uint64
	if err == nil {
		eid, err = delivery.ParseEventID(env.GetEventId())
	}
	if err != nil {
		s.metrics.dropped.WithLabelValues("malformed").Inc()
		s.log.Warn("dropping malformed envelope", slog.Any("err", err))
		return nil
	}
	if exp := env.GetExpiresAt(); exp != nil && exp.AsTime().Before(s.now()) {
		s.metrics.dropped.WithLabelValues("expired").Inc()
		return nil
	}
	ev := &outEvent{
		channel:     channel,
		eventID:     eid,
		body:        appendBody(nil, env.GetEvent(), string(env.GetData())),
		accepted:    env.GetAcceptedAt().AsTime(),
		id:          env.GetId(),
		correlation: env.GetCorrelationId(),
	}
	if env.GetTopic() == "" {
		ev.user = env.GetUserId()
	}
	return ev
}

// deliver hands one published envelope to every local stream that reads the
// channel. It never blocks: a stream whose queue is full is closed as
// slow_consumer, and recovers from history when it reconnects.
func (s *Server) deliver(channel string, payload []byte) {
	ev := s.decode(channel, payload)
	if ev == nil {
		return
	}
	for _, st := range s.hub.readers(channel) {
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

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.metrics.refused.WithLabelValues(code).Inc()
	writeError(w, status, code, msg)
}

// handleEvents serves GET /v1/events.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	if !s.cors(w, r) {
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, OPTIONS")
		s.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	if s.draining.Load() {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "draining", "this edge is shutting down; reconnect to another")
		return
	}
	// This request holds a place from here until its stream is in the hub
	// (and counted there) or it gave up. It takes its place before reading
	// the hub's count, and a stream gives its place back only once it is in
	// the hub: so of two concurrent requests, at least one counts the other.
	// A stream in the hub whose request has not given its place back yet
	// counts twice, which can refuse one too many at the limit, never admit
	// one too many.
	opening := true
	admitted := func() {
		if opening {
			opening = false
			s.opening.Add(-1)
		}
	}
	defer admitted()
	ahead := s.opening.Add(1) // before the count: see above
	if s.hub.count()+int(ahead) > s.cfg.MaxConns {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "edge_full", fmt.Sprintf("this edge holds its limit of %d streams; retry", s.cfg.MaxConns))
		return
	}
	// client is counted against MaxConnsPerIP until the request ends, or
	// its stream does.
	var client netip.Prefix
	if p, ok := s.clientPrefix(r); ok && s.cfg.MaxConnsPerIP > 0 {
		if !s.acquireIP(p) {
			w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
			s.refuse(w, http.StatusTooManyRequests, "too_many_connections",
				fmt.Sprintf("this client address holds its limit of %d streams on this edge", s.cfg.MaxConnsPerIP))
			return
		}
		client = p
		defer func() {
			if client.IsValid() {
				s.releaseIP(client)
			}
		}()
	}
	// r.URL.Query drops the pairs it cannot parse (one with a ';', say):
	// a stream would open without the topics the client asked for.
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_query", "the query string is malformed: "+err.Error())
		return
	}
	claims, err := s.auth.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	}
	topics := query["topic"]
	if status, code, msg := s.checkTopics(topics, claims.topics(s.cfg.TopicsClaim)); status != 0 {
		s.refuse(w, status, code, msg)
		return
	}
	lastID := r.Header.Get("Last-Event-ID")
	if lastID == "" {
		lastID = query.Get("last_event_id")
	}

	ctx := r.Context()
	st := newStream(claims.Subject, s.cfg.EdgeID, s.now(), s.cfg.QueueSize, s.presence.Prefix(), topics)
	st.expires = claims.ExpiresAt.Time
	cursor := s.checkCursor(lastID, parseCursor(lastID))
	// A client that resumes past a notification had it: no push for it.
	s.ackOnReconnect(st, cursor)
	err = s.open(ctx, st, cursor)
	admitted()
	if err != nil {
		s.log.Warn("stream setup failed", slog.Any("err", err))
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "broker_unavailable", "the edge could not reach Redis; retry")
		return
	}

	s.metrics.open.Inc()
	// The stream holds the client's place from here: finish gives it back.
	st.client, client = client, netip.Prefix{}
	reason, adopted := s.stream(ctx, w, r, st)
	if adopted {
		// The writers serve the stream from here, and finish it.
		return
	}
	// The first reason wins: a stream closed as slow_consumer whose blocked
	// write then times out is counted as slow_consumer, once.
	st.close(reason)
	s.finish(ctx, st)
}

// finish cleans up after a stream that ended: it counts it, leaves the hub,
// and removes the stream's lease and its place in MaxConnsPerIP.
func (s *Server) finish(ctx context.Context, st *stream) {
	reason := st.closed()
	s.metrics.open.Dec()
	s.metrics.closed.WithLabelValues(string(reason)).Inc()
	s.metrics.duration.Observe(s.now().Sub(st.conn.Since).Seconds())

	cleanupCtx := context.WithoutCancel(ctx)
	s.hub.leave(cleanupCtx, st)
	rmCtx, cancel := context.WithTimeout(cleanupCtx, 2*time.Second)
	defer cancel()
	if err := s.remover.remove(rmCtx, st.conn); err != nil {
		// The lease expires by itself within its TTL.
		s.metrics.presenceErrors.Inc()
		s.log.Warn("presence remove failed", slog.Any("err", err))
	}
	if st.client.IsValid() {
		s.releaseIP(st.client)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "stream closed",
			slog.String("conn", st.conn.ID), slog.String("reason", string(reason)))
	}
}

// open sets a new stream up: it fixes the position of each stream the client
// has none for, subscribes, enforces the per-user limit, leases presence and
// reads what the client missed. Positions are fixed before subscribing, so
// that an event published in between is found in history.
func (s *Server) open(ctx context.Context, st *stream, cursor map[string]uint64) error {
	after := make([]*uint64, len(st.names))
	var fresh []int
	for i, name := range st.names {
		if pos, ok := cursor[name]; ok {
			after[i] = &pos
		} else {
			fresh = append(fresh, i)
		}
	}
	if len(fresh) > 0 {
		streams := make([]delivery.Stream, len(fresh))
		for j, i := range fresh {
			streams[j] = st.streams[i]
		}
		res, err := s.history.Since(ctx, streams, make([]*uint64, len(fresh)))
		if err != nil {
			return err
		}
		for j, i := range fresh {
			after[i] = &res[j].Position
		}
	}
	// Deliveries charge the budget from the moment the stream joins.
	st.budget = s.budget
	joinCtx, cancel := context.WithTimeout(ctx, s.cfg.SubscribeTimeout)
	err := s.hub.join(joinCtx, st)
	cancel()
	if err != nil {
		return err
	}
	s.enforceUserLimit(st)
	if err := s.presence.Lease(ctx, st.conn); err != nil {
		s.hub.leave(context.WithoutCancel(ctx), st)
		s.metrics.presenceErrors.Inc()
		return err
	}
	// The first page of what the client missed; the stream's writer reads
	// the rest, a page at a time (replay.go).
	for i, p := range after {
		st.pos[i] = *p
	}
	st.replay = newReplay(st.pos)
	if err := s.fill(ctx, st); err != nil {
		s.dropReplay(st)
		s.hub.leave(context.WithoutCancel(ctx), st)
		return err
	}
	return nil
}

// cursorAhead is how far past this edge's clock a position may be. Event ids
// are Redis' clock in ms × 1000 (delivery's history), so a position further
// ahead was never sent: it comes from a corrupt or forged Last-Event-ID.
const cursorAhead = time.Hour

// checkCursor turns the user's position in a Last-Event-ID that the edge
// cannot have sent (unparsable, or in the future) into position 1, long
// gone from history: the client, whose state is unknown, gets a herald.reset
// and re-fetches it. Left alone, a future position would hide every event
// until the stream reached it, and acknowledge them all on reconnect.
func (s *Server) checkCursor(lastID string, cursor map[string]uint64) map[string]uint64 {
	if _, ok := cursor[""]; !ok && lastID != "" {
		cursor[""] = 1
	}
	limit := uint64(s.now().Add(cursorAhead).UnixMilli()) * 1000
	for name, pos := range cursor {
		if pos == 0 || pos > limit {
			cursor[name] = 1
		}
	}
	return cursor
}

// enforceUserLimit closes the user's oldest local streams beyond the limit
// with reason replaced.
func (s *Server) enforceUserLimit(st *stream) {
	mine := s.hub.readers(st.channels[0])
	if len(mine) <= s.cfg.MaxConnsPerUser {
		return
	}
	slices.SortFunc(mine, func(a, b *stream) int { return a.conn.Since.Compare(b.conn.Since) })
	for _, old := range mine[:len(mine)-s.cfg.MaxConnsPerUser] {
		if old != st {
			old.close(CloseReplaced)
		}
	}
}

// clientPrefix returns the address r counts against for MaxConnsPerIP: the
// peer's or, from a trusted proxy, the rightmost untrusted address in
// X-Forwarded-For (what the client sent itself is further left, and cannot
// be trusted). An IPv6 address counts as its /64. It reports false for a peer
// with no IP address.
func (s *Server) clientPrefix(r *http.Request) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{}, false
	}
	addr := ap.Addr().Unmap()
	if s.trustedProxy(addr) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for _, h := range slices.Backward(hops) {
			hop, err := parseHop(strings.TrimSpace(h))
			if err != nil {
				// Not written by a trusted proxy: the last good hop is the
				// client.
				break
			}
			addr = hop.Unmap()
			if !s.trustedProxy(addr) {
				break
			}
		}
	}
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, err := addr.WithZone("").Prefix(bits)
	return p, err == nil
}

// parseHop reads an X-Forwarded-For entry: an address, or an address and
// port as some load balancers write it.
func parseHop(h string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(h); err == nil {
		return a, nil
	}
	ap, err := netip.ParseAddrPort(h)
	return ap.Addr(), err
}

func (s *Server) trustedProxy(addr netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// acquireIP counts one more stream for client, unless it holds its limit.
func (s *Server) acquireIP(client netip.Prefix) bool {
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	if s.perIP[client] >= s.cfg.MaxConnsPerIP {
		return false
	}
	s.perIP[client]++
	return true
}

func (s *Server) releaseIP(client netip.Prefix) {
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	if s.perIP[client]--; s.perIP[client] <= 0 {
		delete(s.perIP, client)
	}
}

// checkTopics validates the requested topics against the limits and the
// client's allowed patterns. It returns a zero status when they are fine.
func (s *Server) checkTopics(topics, allowed []string) (status int, code, msg string) {
	if len(topics) > s.cfg.MaxTopics {
		return http.StatusBadRequest, "too_many_topics", fmt.Sprintf("at most %d topics per stream", s.cfg.MaxTopics)
	}
	seen := make(map[string]bool, len(topics))
	for _, t := range topics {
		if !delivery.ValidTopic(t) {
			return http.StatusBadRequest, "bad_topic", fmt.Sprintf("topic %q is not a valid topic name", t)
		}
		if seen[t] {
			return http.StatusBadRequest, "bad_topic", fmt.Sprintf("topic %q is repeated", t)
		}
		seen[t] = true
		if !delivery.TopicAllowed(t, allowed) {
			return http.StatusForbidden, "forbidden_topic", fmt.Sprintf("the token does not allow topic %q", t)
		}
	}
	return 0, "", ""
}

// stream writes the response headers and st's first bytes to w. It then
// hands an HTTP/1.1 stream over to the writers, and reports adopted; it
// serves any other (HTTP/2) itself, as the only writer of w, until the
// stream ends, and says why.
func (s *Server) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, st *stream) (_ CloseReason, adopted bool) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	// An HTTP/1.1 response is chunked, which the writers go on with; an
	// HTTP/1.0 one is not, and stays with this goroutine, like HTTP/2.
	takeOver := s.writers != nil && r.ProtoMajor == 1 && r.ProtoMinor >= 1
	if takeOver {
		// The writers close the connection when the stream ends.
		h.Set("Connection", "close")
	}
	w.WriteHeader(http.StatusOK)

	write := func(b []byte) CloseReason {
		// Deadlines go by the real clock, not the edge's.
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
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
	buf = s.appendFirstPage(buf, st)
	if reason := write(buf); reason != "" {
		return reason, false
	}
	s.pageWritten(st)
	if s.draining.Load() {
		// The drain began while this stream was opening.
		return s.closeDrained(write), false
	}
	if takeOver {
		// What the client sent after its request (nothing, from an SSE
		// client) is dropped with the buffers Hijack returns.
		nc, _, err := rc.Hijack()
		if err == nil {
			if !s.writers.adopt(st, nc) {
				// Never for a TCP connection; the client reconnects.
				_ = nc.Close()
				return CloseWriteError, false
			}
			return "", true
		}
	}

	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	expiry := time.NewTimer(st.expires.Sub(s.now()))
	defer expiry.Stop()
	var batch []*outEvent
	for {
		select {
		case <-ctx.Done():
			return CloseClientClosed, false
		case <-expiry.C:
			return CloseTokenExpired, false
		case <-heartbeat.C:
			if reason := write(appendComment(buf[:0], "hb")); reason != "" {
				return reason, false
			}
		case <-st.wake:
			var (
				resync bool
				reason CloseReason
			)
			batch, resync, _, reason, _ = st.take(batch[:0])
			switch {
			case reason == CloseServerDrain:
				return s.closeDrained(write), false
			case reason == CloseReplaced:
				return s.closeReplaced(write), false
			case reason != "":
				return reason, false
			case resync:
				// The next page of a catch-up from history: of what the
				// client missed, or of what was published while the Redis
				// link was down.
				if buf, reason = s.catchUp(ctx, buf[:0], st); reason != "" {
					return reason, false
				}
				if len(buf) > 0 {
					if reason := write(buf); reason != "" {
						return reason, false
					}
				}
				s.pageWritten(st)
				continue
			}
			var written []*outEvent
			if buf, written = s.appendEvents(buf[:0], st, batch); len(written) == 0 {
				continue
			}
			if reason := write(buf); reason != "" {
				return reason, false
			}
			s.delivered(ctx, st, written)
			heartbeat.Reset(s.cfg.Heartbeat)
		}
	}
}

// appendEvents appends the events of batch that the client does not have
// yet, and returns them too (in batch's array).
func (s *Server) appendEvents(b []byte, st *stream, batch []*outEvent) ([]byte, []*outEvent) {
	written := batch[:0]
	for _, ev := range batch {
		if next, ok := st.appendLive(b, ev); ok {
			b = next
			written = append(written, ev)
		}
	}
	return b, written
}

// delivered counts and traces the events just written to st.
func (s *Server) delivered(ctx context.Context, st *stream, written []*outEvent) {
	if len(written) == 0 {
		return
	}
	now := s.now()
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	for _, ev := range written {
		s.metrics.latency.Observe(now.Sub(ev.accepted).Seconds())
		if ev.user != "" && s.trail != nil {
			s.trail.add(ev.user, ev.id, now)
		}
		if debug {
			s.log.LogAttrs(ctx, slog.LevelDebug, "delivered", slog.String("notification_id", ev.id),
				slog.String("route", "online"), slog.String("conn", st.conn.ID), s.cfg.UserIDs.Attr(st.user),
				slog.String("correlation_id", ev.correlation), slog.Duration("latency", now.Sub(ev.accepted)))
		}
	}
	s.metrics.written.Add(float64(len(written)))
}

// closeDrained ends a drained stream with a jittered retry: field, so that
// the clients of a draining edge come back spread out.
func (s *Server) closeDrained(write func([]byte) CloseReason) CloseReason {
	_ = write(appendRetry(nil, s.drainRetry()))
	return CloseServerDrain
}

// drainRetry is the reconnection delay a drained client is given: Retry,
// plus up to twice Retry of jitter.
func (s *Server) drainRetry() time.Duration {
	return s.cfg.Retry + time.Duration(mathrand.Int64N(int64(2*s.cfg.Retry)+1))
}

// ResetEvent is the SSE event name that tells a client it may have missed
// events that are no longer in history: it should re-fetch its full state.
const ResetEvent = "herald.reset"

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
