package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Route is where the publisher sent a notification.
type Route string

const (
	// RouteOnline: published, and at least one edge subscriber took it.
	RouteOnline Route = "online"
	// RouteOffline: the user had no live lease; nothing was published.
	RouteOffline Route = "offline"
	// RouteStale: presence said online, but the publish reached no edge.
	// Callers treat it as offline.
	RouteStale Route = "stale"
)

// Result is the outcome of one Publish.
type Result struct {
	ID          string // the notification id (the first call's, on a duplicate)
	Route       Route
	Subscribers int  // edge subscribers that took the publish
	Duplicate   bool // the idempotency key had been seen; nothing was published
	// AcceptedAt is when the first call was accepted, on a duplicate.
	AcceptedAt time.Time
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// IdempotencyWindow is how long an idempotency key is remembered. Default
	// 10 minutes: long enough to cover a caller's retries and a router restart,
	// short enough that the keys of a busy caller do not fill Redis.
	IdempotencyWindow time.Duration
}

// Publisher publishes notifications to online users.
type Publisher struct {
	rdb      redis.Scripter
	presence *presence.Registry
	cfg      PublisherConfig
}

// NewPublisher returns a Publisher that looks presence up in reg and publishes
// through rdb, which must reach the same Redis.
func NewPublisher(rdb redis.Scripter, reg *presence.Registry, cfg PublisherConfig) (*Publisher, error) {
	if rdb == nil || reg == nil {
		return nil, errors.New("delivery: publisher needs a redis client and a presence registry")
	}
	if cfg.IdempotencyWindow == 0 {
		cfg.IdempotencyWindow = 10 * time.Minute
	}
	if cfg.IdempotencyWindow < time.Millisecond {
		return nil, fmt.Errorf("delivery: idempotency window %v is too short", cfg.IdempotencyWindow)
	}
	return &Publisher{rdb: rdb, presence: reg, cfg: cfg}, nil
}

// idempotencyKey is the key that remembers user's idempotency key.
func (p *Publisher) idempotencyKey(user, key string) string {
	return p.presence.Prefix() + presence.HashTag(user) + ":idem:" + key
}

// notifyScript is the whole online path in one round trip.
//
//	KEYS[1] presence key, KEYS[2] idempotency key (optional)
//	ARGV[1] channel, ARGV[2] envelope, ARGV[3] idempotency record, ARGV[4] window ms
//
// With an idempotency key it first returns the stored record, if any. Then it
// counts live leases, publishes when there is one, and stores the record
// "route|subscribers|" .. ARGV[3] under the idempotency key.
var notifyScript = redis.NewScript(`
if KEYS[2] then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {'dup', prev} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local route = 'offline'
local subs = 0
if live > 0 then
  subs = redis.call('PUBLISH', ARGV[1], ARGV[2])
  if subs > 0 then route = 'online' else route = 'stale' end
end
if KEYS[2] then
  redis.call('SET', KEYS[2], route .. '|' .. subs .. '|' .. ARGV[3], 'PX', ARGV[4])
end
return {route, tostring(subs)}
`)

// Publish routes env to its user in one Redis round trip: it checks presence
// and, when the user is online, publishes env on the user's channel. With a
// non-empty idempotencyKey, a key seen within the window returns the first
// call's result with Duplicate set, and publishes nothing.
func (p *Publisher) Publish(ctx context.Context, env *heraldv1.Envelope, idempotencyKey string) (Result, error) {
	payload, err := Marshal(env)
	if err != nil {
		return Result{}, err
	}
	keys := []string{p.presence.Key(env.GetUserId())}
	record := env.GetId() + "|" + strconv.FormatInt(env.GetAcceptedAt().AsTime().UnixMilli(), 10)
	if idempotencyKey != "" {
		keys = append(keys, p.idempotencyKey(env.GetUserId(), idempotencyKey))
	}
	res, err := notifyScript.Run(ctx, p.rdb, keys,
		Channel(p.presence.Prefix(), env.GetUserId()), payload, record,
		p.cfg.IdempotencyWindow.Milliseconds()).StringSlice()
	if err != nil {
		return Result{}, fmt.Errorf("delivery: publish: %w", err)
	}
	if len(res) == 2 && res[0] == "dup" {
		return parseRecord(res[1])
	}
	if len(res) != 2 {
		return Result{}, fmt.Errorf("delivery: publish: unexpected reply %q", res)
	}
	subs, err := strconv.Atoi(res[1])
	if err != nil {
		return Result{}, fmt.Errorf("delivery: publish: bad subscriber count %q", res[1])
	}
	return Result{
		ID:          env.GetId(),
		Route:       Route(res[0]),
		Subscribers: subs,
		AcceptedAt:  env.GetAcceptedAt().AsTime(),
	}, nil
}

// parseRecord decodes "route|subscribers|id|acceptedMillis".
func parseRecord(rec string) (Result, error) {
	parts := strings.Split(rec, "|")
	if len(parts) != 4 {
		return Result{}, fmt.Errorf("delivery: bad idempotency record %q", rec)
	}
	subs, err1 := strconv.Atoi(parts[1])
	ms, err2 := strconv.ParseInt(parts[3], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Result{}, fmt.Errorf("delivery: bad idempotency record %q: %w", rec, err)
	}
	return Result{
		ID:          parts[2],
		Route:       Route(parts[0]),
		Subscribers: subs,
		Duplicate:   true,
		AcceptedAt:  time.UnixMilli(ms),
	}, nil
}
