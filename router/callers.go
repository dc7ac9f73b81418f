package router

import (
	"bytes"
	"cmp"
	"crypto/sha256"
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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/redact"
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
	// but the unary health check.
	Callers []CallerConfig
	// UserIDs says whether refusal logs show user ids or their hashes.
	UserIDs redact.UserIDs
	// MaxCallsPerCaller bounds the calls and streams one caller has in
	// flight on this router; one more is refused RESOURCE_EXHAUSTED.
	// Default DefaultMaxCallsPerCaller (1000); negative: no bound.
	MaxCallsPerCaller int
}

// DefaultMaxCallsPerCaller is AuthConfig.MaxCallsPerCaller's default. A
// caller's unary calls in flight are its rate times the router's latency
// (10,000 calls/s at 2 ms: 20), besides which it holds a NotifyStream or
// a health Watch per sender at most: 1000 leave a busy caller room many
// times over, and one caller can hold about 1% of the 102,400 calls the
// router's connections carry (DefaultMaxConns × DefaultMaxStreamsPerConn).
const DefaultMaxCallsPerCaller = 1000

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
	userIDs redact.UserIDs
	log     *slog.Logger
	now     func() time.Time
	refused *prometheus.CounterVec
	// maxCalls is MaxCallsPerCaller, negative for no bound.
	maxCalls int
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
	calls       atomic.Int64 // calls and streams in flight (Callers.enter)
}

// Refusal reasons, the values of herald_router_auth_refused_total's label.
const (
	refusedUnauthenticated  = "unauthenticated"
	refusedPermissionDenied = "permission_denied"
	refusedRateLimited      = "rate_limited"
	refusedTooManyCalls     = "too_many_calls"
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
		maxCalls: cmp.Or(cfg.MaxCallsPerCaller, DefaultMaxCallsPerCaller),
		log:      deps.Logger,
		now:      deps.Now,
		logLimit: rate.NewLimiter(5, 20),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "auth_refused_total",
			Help: "API calls refused by publisher security: unauthenticated, permission_denied, rate_limited or too_many_calls.",
		}, []string{"reason"}),
	}
	for _, r := range []string{refusedUnauthenticated, refusedPermissionDenied, refusedRateLimited, refusedTooManyCalls} {
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
