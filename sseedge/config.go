package sseedge

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/delivery/redact"
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
	// RequestTimeout bounds the rest of a request, from its headers on:
	// reading its body, writing a response other than a stream, and a
	// stream's request until it is admitted (authenticated, with its
	// topics allowed), when the stream's own bounds take over. A client
	// that stalls its body, or stops reading a refusal, is cut off then.
	// Default 10s: an ack's body is at most 64 KiB.
	RequestTimeout time.Duration
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
	// MaxConnsPerIP is the most streams (counting stream requests being
	// authenticated) one client address may hold on this edge, and the
	// most acks it may have being answered, counted apart; beyond either,
	// requests get 429 too_many_connections. IPv6 addresses count by /64,
	// what one host usually gets. Default 1000: an office or carrier NAT
	// puts hundreds of users, each with a few tabs, behind one address;
	// one host alone still cannot take the edge's MaxConns. Negative
	// disables the limit.
	MaxConnsPerIP int
	// MaxTCPConnsPerIP is the most TCP connections one peer address (IPv6:
	// its /64) may hold open on this edge, counted as they are accepted,
	// before any request is read; one more is closed at once. The
	// addresses of TrustedProxies are exempt, since each carries many
	// clients. Default half as many again as MaxConnsPerIP (1500): room
	// for each of its streams' connections and some more for acks and
	// keep-alive connections (at least 64 more); none when MaxConnsPerIP is
	// disabled. Negative disables the limit.
	MaxTCPConnsPerIP int
	// MaxTCPConns is the most TCP connections this edge holds open, from
	// any address, trusted proxies included. One more takes the place of
	// the connection that has waited longest holding no stream, which is
	// closed (evicted); it is closed at once only when every connection
	// holds a stream (see connLimits).
	// Default half as many again as MaxConns (15000; at least 64 more).
	// Keep it a few hundred under the process's open-file limit.
	MaxTCPConns int
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
	UserIDs redact.UserIDs
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
	History *history.Reader
	// Pages, if set, serves every path other than /v1/events (for example a
	// demo page at /).
	Pages http.Handler
	// HTTPClient fetches an http(s) JWTJWKS. Default http.DefaultClient;
	// each fetch is bounded to 10s.
	HTTPClient *http.Client
	// TracerProvider, when set, traces each write of a notification that
	// carries a trace context to a stream, as a span ("herald.sse.deliver")
	// of the router's trace. Nil, the default, traces nothing.
	TracerProvider trace.TracerProvider
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
	setDefault(&cfg.RequestTimeout, 10*time.Second)
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
	if cfg.MaxTCPConnsPerIP == 0 {
		cfg.MaxTCPConnsPerIP = -1
		if cfg.MaxConnsPerIP > 0 {
			cfg.MaxTCPConnsPerIP = withRoom(cfg.MaxConnsPerIP)
		}
	}
	setDefaultInt(&cfg.MaxTCPConns, withRoom(cfg.MaxConns))
	setDefaultInt(&cfg.MaxTopics, 16)
	if cfg.TopicsClaim == "" {
		cfg.TopicsClaim = "topics"
	}
	if cfg.QueueSize < 0 || cfg.Heartbeat < 0 || cfg.Retry < 0 || cfg.WriteTimeout < 0 ||
		cfg.SubscribeTimeout < 0 || cfg.ReadHeaderTimeout < 0 || cfg.RequestTimeout < 0 || cfg.DrainPeriod < 0 ||
		cfg.MaxConnsPerUser < 0 || cfg.MaxConns < 0 || cfg.MaxTopics < 0 || cfg.BrokerGrace < 0 ||
		cfg.JWKSRefresh < 0 || cfg.MaxQueuedBytes < 0 || cfg.MaxTCPConns < 0 {
		return nil, fmt.Errorf("sseedge: negative value in config")
	}
	if deps.History == nil {
		h, err := history.New(deps.Redis, deps.Presence.Prefix(), delivery.HistoryConfig{})
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
		receipts: receipts.New(deps.Redis, receipts.Config{Prefix: deps.Presence.Prefix()}),
		log:      deps.Logger.With(slog.String("edge", cfg.EdgeID)),
		now:      deps.Now,
		auth:     auth,
		history:  deps.History,
		pages:    deps.Pages,
		perIP:    make(map[netip.Prefix]int),
		acksIP:   make(map[netip.Prefix]int),
		budget:   newBudget(cfg.MaxQueuedBytes),
	}
	if cfg.NoTrail {
		s.trail = nil
	}
	if deps.TracerProvider != nil {
		s.tracer = deps.TracerProvider.Tracer(delivery.TracerName)
	}
	// The counts exist before the gauge that reads them is registered; their
	// refusal and eviction counters come with the metrics, before anything
	// is served.
	s.conns = newConnLimits(cfg.MaxTCPConns, cfg.MaxTCPConnsPerIP, s.trustedProxy, nil, nil)
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
	}, func() float64 { return float64(s.budget.used.Load()) }, func() float64 {
		n, _ := s.conns.open()
		return float64(n)
	})
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.conns.refused, s.conns.evicted = m.tcpRefused, m.tcpEvicted
	return s, nil
}

// withRoom is a limit on TCP connections for n streams: room for each
// stream's connection and half as many again, at least 64, for the
// requests besides them (acks, refused requests) and the keep-alive
// connections idle between requests.
func withRoom(n int) int { return n + max(n/2, 64) }

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
