// Package presence is Herald's registry of who is connected: every SSE
// connection holds a lease in Redis, and a user is online while at least one
// of their leases is live.
package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config configures a Registry. The zero value of each field means the
// documented default.
type Config struct {
	// Prefix namespaces every Redis key. Default "herald:", so that Herald can
	// share a Redis with other applications.
	Prefix string
	// LeaseTTL is how long a connection counts as online without being
	// renewed. Default 30s: an edge that dies without closing its connections
	// stops counting within this time. Edges renew every LeaseTTL/3, so a
	// lease survives two missed renewals.
	LeaseTTL time.Duration
}

const (
	// DefaultPrefix is the key prefix of every part of Herald by default:
	// presence owns the key layout, and the other parts (delivery, receipts,
	// devices, the FCM worker, the commands) take their default from here.
	DefaultPrefix   = "herald:"
	defaultLeaseTTL = 30 * time.Second
)

// Conn is one SSE connection's presence entry.
type Conn struct {
	User  string    // the user it belongs to
	ID    string    // the connection id, unique per connection
	Edge  string    // the edge that holds it
	Since time.Time // when it connected
	// Expires is when the lease runs out unless renewed. Filled by Conns;
	// ignored by Lease and Remove.
	Expires time.Time
}

// ErrInvalidConn is returned for a Conn whose fields cannot be stored.
var ErrInvalidConn = errors.New("presence: invalid connection")

// Registry keeps presence leases in Redis. There is exactly one Redis key per
// user, a sorted set of that user's connections scored by their lease
// deadline, so presence shards cleanly on Redis Cluster. Lease deadlines use
// Redis' own clock, so edges and routers need not agree on the time.
type Registry struct {
	rdb redis.UniversalClient
	cfg Config
}

// New returns a Registry that stores leases through rdb.
func New(rdb redis.UniversalClient, cfg Config) (*Registry, error) {
	if rdb == nil {
		return nil, errors.New("presence: nil redis client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = defaultLeaseTTL
	}
	if cfg.LeaseTTL < 10*time.Millisecond {
		return nil, fmt.Errorf("presence: lease TTL %v is below 10ms", cfg.LeaseTTL)
	}
	if strings.ContainsAny(cfg.Prefix, "{}") {
		// A brace in the prefix would become the keys' hash tag on a Redis
		// Cluster, and put every user in one slot, or split a user's keys.
		return nil, fmt.Errorf("presence: key prefix %q must not contain { or }", cfg.Prefix)
	}
	return &Registry{rdb: rdb, cfg: cfg}, nil
}

// LeaseTTL is the configured lease lifetime.
func (r *Registry) LeaseTTL() time.Duration { return r.cfg.LeaseTTL }

// RenewInterval is how often a holder should renew its leases.
func (r *Registry) RenewInterval() time.Duration { return r.cfg.LeaseTTL / 3 }

// Key is the Redis key that holds user's presence.
func (r *Registry) Key(user string) string {
	return r.cfg.Prefix + HashTag(user) + ":presence"
}

// Prefix is the configured key prefix.
func (r *Registry) Prefix() string { return r.cfg.Prefix }

// leaseScript adds or renews leases, for each of its keys (users): with a
// deadline of Redis' now + ARGV[1] ms, it drops the key's expired leases,
// adds its leases, and sets it to expire with its last lease. After
// ARGV[1] come, for each key in turn, its number of leases and the leases.
// One script for many users saves each user the script call's own cost,
// which was most of a renewal's; a Redis Cluster script must keep to one
// slot, so there it has one user. The deadline goes to ZADD as a string,
// as a Lua number would cost a float format per call.
var leaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowS = string.format('%d', now)
local deadline = string.format('%d', now + tonumber(ARGV[1]))
local a = 2
for k = 1, #KEYS do
  local key = KEYS[k]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', nowS)
  local n = tonumber(ARGV[a])
  for i = a + 1, a + n do
    redis.call('ZADD', key, deadline, ARGV[i])
  end
  a = a + n + 1
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
return #KEYS
`)

// leaseBatchUsers is the most users one leaseScript renews on a single
// Redis: about half a millisecond of Redis, which other clients wait for.
const leaseBatchUsers = 64

// removeScript removes the leases in ARGV and drops expired ones.
var removeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
`)

// countScript counts the live leases.
var countScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`)

// listScript returns the live leases with their deadlines.
var listScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
`)

// member encodes a connection as a sorted-set member: "edge|conn|sinceMillis".
func member(c Conn) (string, error) {
	if c.User == "" || c.ID == "" || c.Edge == "" {
		return "", fmt.Errorf("%w: user, id and edge are required", ErrInvalidConn)
	}
	if strings.Contains(c.ID, "|") || strings.Contains(c.Edge, "|") {
		return "", fmt.Errorf("%w: id and edge must not contain '|'", ErrInvalidConn)
	}
	return c.Edge + "|" + c.ID + "|" + strconv.FormatInt(c.Since.UnixMilli(), 10), nil
}

func parseMember(user, m string, deadline float64) (Conn, bool) {
	edge, rest, ok := strings.Cut(m, "|")
	if !ok {
		return Conn{}, false
	}
	id, since, ok := strings.Cut(rest, "|")
	if !ok {
		return Conn{}, false
	}
	ms, err := strconv.ParseInt(since, 10, 64)
	if err != nil {
		return Conn{}, false
	}
	return Conn{
		User:    user,
		ID:      id,
		Edge:    edge,
		Since:   time.UnixMilli(ms),
		Expires: time.UnixMilli(int64(deadline)),
	}, true
}

// groupByUser encodes conns and groups the members by user, keeping order.
func groupByUser(conns []Conn) (users []string, members map[string][]any, err error) {
	members = make(map[string][]any)
	for _, c := range conns {
		m, err := member(c)
		if err != nil {
			return nil, nil, err
		}
		if _, seen := members[c.User]; !seen {
			users = append(users, c.User)
		}
		members[c.User] = append(members[c.User], m)
	}
	return users, members, nil
}

// Lease adds the connections or renews their leases, in one pipeline.
func (r *Registry) Lease(ctx context.Context, conns ...Conn) error {
	if len(conns) == 0 {
		return nil
	}
	users, members, err := groupByUser(conns)
	if err != nil {
		return err
	}
	ttl := r.cfg.LeaseTTL.Milliseconds()
	per := leaseBatchUsers
	if _, cluster := r.rdb.(*redis.ClusterClient); cluster {
		per = 1
	}
	_, err = r.runPipelined(ctx, leaseScript, func(pipe redis.Pipeliner) []*redis.Cmd {
		// queue runs again after a NOSCRIPT: it must not use users up.
		var cmds []*redis.Cmd
		for todo := users; len(todo) > 0; {
			n := min(len(todo), per)
			keys, args := make([]string, 0, n), []any{ttl}
			for _, u := range todo[:n] {
				keys = append(keys, r.Key(u))
				args = append(append(args, len(members[u])), members[u]...)
			}
			cmds = append(cmds, leaseScript.EvalSha(ctx, pipe, keys, args...))
			todo = todo[n:]
		}
		return cmds
	})
	if err != nil {
		return fmt.Errorf("presence: lease: %w", err)
	}
	return nil
}

// Remove deletes the connections' leases at once, as on a clean close.
func (r *Registry) Remove(ctx context.Context, conns ...Conn) error {
	if len(conns) == 0 {
		return nil
	}
	users, members, err := groupByUser(conns)
	if err != nil {
		return err
	}
	_, err = r.runPipelined(ctx, removeScript, func(pipe redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, 0, len(users))
		for _, u := range users {
			cmds = append(cmds, removeScript.EvalSha(ctx, pipe, []string{r.Key(u)}, members[u]...))
		}
		return cmds
	})
	if err != nil {
		return fmt.Errorf("presence: remove: %w", err)
	}
	return nil
}

// Online reports, for each user, how many live connections they have, in one
// pipeline. A user with zero is offline.
func (r *Registry) Online(ctx context.Context, users ...string) (map[string]int, error) {
	out := make(map[string]int, len(users))
	if len(users) == 0 {
		return out, nil
	}
	cmds, err := r.runPipelined(ctx, countScript, func(pipe redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(users))
		for i, u := range users {
			cmds[i] = countScript.EvalSha(ctx, pipe, []string{r.Key(u)})
		}
		return cmds
	})
	if err != nil {
		return nil, fmt.Errorf("presence: online: %w", err)
	}
	for i, u := range users {
		n, err := cmds[i].Int()
		if err != nil {
			return nil, fmt.Errorf("presence: online %q: %w", u, err)
		}
		out[u] = n
	}
	return out, nil
}

// Conns lists user's live connections.
func (r *Registry) Conns(ctx context.Context, user string) ([]Conn, error) {
	res, err := listScript.Run(ctx, r.rdb, []string{r.Key(user)}).Slice()
	if err != nil {
		return nil, fmt.Errorf("presence: conns: %w", err)
	}
	var out []Conn
	for i := 0; i+1 < len(res); i += 2 {
		m, _ := res[i].(string)
		score, _ := res[i+1].(string)
		deadline, err := strconv.ParseFloat(score, 64)
		if err != nil {
			continue
		}
		if c, ok := parseMember(user, m, deadline); ok {
			out = append(out, c)
		}
	}
	return out, nil
}

// runPipelined sends the script calls that queue builds in one pipeline. When
// Redis does not know the script (first use, or after a restart), it loads the
// script and sends the pipeline once more; the script calls are idempotent.
func (r *Registry) runPipelined(ctx context.Context, script *redis.Script, queue func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		pipe := r.rdb.Pipeline()
		cmds := queue(pipe)
		_, err := pipe.Exec(ctx)
		if err == nil {
			return cmds, nil
		}
		if attempt > 0 || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return nil, err
		}
		if err := script.Load(ctx, r.rdb).Err(); err != nil {
			return nil, err
		}
	}
}
