// Package devices is the registry of users' FCM registration tokens: the
// devices that the FCM worker pushes a user's offline notifications to.
package devices

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
)

// Device is one of a user's devices: an FCM registration token.
type Device struct {
	Token        string
	Platform     string // "android", "ios" or "web"
	RegisteredAt time.Time
}

// The defaults that the zero values of Config stand for.
const (
	DefaultMaxPerUser = 10
	DefaultTTL        = 270 * 24 * time.Hour
)

// Config configures a Registry. The zero value of each field means the
// documented default.
type Config struct {
	// Prefix namespaces the keys, as presence.Config.Prefix does. Default
	// presence.DefaultPrefix.
	Prefix string
	// MaxPerUser bounds a user's tokens. Default 10: a person rarely has more
	// devices, while an app that registers a new token at every start would
	// otherwise grow the list (and the pushes per notification) forever. The
	// least recently registered tokens go first.
	MaxPerUser int
	// TTL is how long a user's tokens are kept after the last registration.
	// Default 270 days, the inactivity after which FCM itself treats a token
	// as expired. Apps re-register at start, which refreshes it.
	TTL time.Duration
}

// MaxTokenBytes bounds an FCM registration token. Real ones are about 160
// bytes; the bound only keeps garbage out.
const MaxTokenBytes = 4096

// Platforms are the platform names a Device may have.
var Platforms = []string{"android", "ios", "web"}

// ErrInvalid is returned for a token or platform that cannot be stored.
var ErrInvalid = errors.New("devices: invalid device")

// Registry is the registry of users' FCM tokens. A user's tokens live in one
// sorted set (token → registration time in ms) and one hash (token →
// platform), both under the user's hash tag, so that a user's devices share a
// Redis Cluster slot with the rest of the user's keys.
//
// It has no clock of its own: registration times are Redis' TIME, taken in
// the register script, so that every router agrees on them.
type Registry struct {
	rdb redis.UniversalClient
	cfg Config
}

// New returns a device registry stored through rdb.
func New(rdb redis.UniversalClient, cfg Config) (*Registry, error) {
	if rdb == nil {
		return nil, errors.New("devices: devices need a redis client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = presence.DefaultPrefix
	}
	if cfg.MaxPerUser == 0 {
		cfg.MaxPerUser = DefaultMaxPerUser
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxPerUser < 1 || cfg.TTL < time.Second {
		return nil, fmt.Errorf("devices: invalid devices config %+v", cfg)
	}
	return &Registry{rdb: rdb, cfg: cfg}, nil
}

func (d *Registry) keys(user string) []string {
	return delivery.DeviceKeys(d.cfg.Prefix, user)
}

// CheckToken validates an FCM registration token: printable ASCII, at most
// MaxTokenBytes.
func CheckToken(token string) error {
	if token == "" {
		return errors.New("must not be empty")
	}
	if len(token) > MaxTokenBytes {
		return fmt.Errorf("is %d bytes, over the limit of %d", len(token), MaxTokenBytes)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return errors.New("must be printable ASCII without spaces")
		}
	}
	return nil
}

// registerScript adds or refreshes a token with Redis' time, evicts the
// oldest tokens past the bound, and renews both keys' expiry.
//
//	KEYS: tokens, platforms
//	ARGV: token, platform, max per user, ttl ms
//
//go:embed register.lua
var registerLua string

var registerScript = redis.NewScript(registerLua)

// Register adds token to user's devices, or refreshes it. It returns how many
// devices the user has and how many old tokens were evicted to make room.
func (d *Registry) Register(ctx context.Context, user, token, platform string) (devices, evicted int, err error) {
	if err := delivery.CheckUserID(user); err != nil {
		return 0, 0, fmt.Errorf("%w: user %v", ErrInvalid, err)
	}
	if err := CheckToken(token); err != nil {
		return 0, 0, fmt.Errorf("%w: token %v", ErrInvalid, err)
	}
	if !validPlatform(platform) {
		return 0, 0, fmt.Errorf("%w: platform %q is not one of %s", ErrInvalid, platform, strings.Join(Platforms, ", "))
	}
	res, err := registerScript.Run(ctx, d.rdb, d.keys(user), token, platform, d.cfg.MaxPerUser, d.cfg.TTL.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("devices: register device: %w", err)
	}
	return int(res[0]), int(res[1]), nil
}

func validPlatform(p string) bool {
	for _, q := range Platforms {
		if p == q {
			return true
		}
	}
	return false
}

// Unregister removes tokens from user's devices and reports how many it held.
func (d *Registry) Unregister(ctx context.Context, user string, tokens ...string) (int, error) {
	if len(tokens) == 0 {
		return 0, nil
	}
	k := d.keys(user)
	members := make([]any, len(tokens))
	for i, t := range tokens {
		members[i] = t
	}
	var removed *redis.IntCmd
	_, err := d.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		removed = p.ZRem(ctx, k[0], members...)
		p.HDel(ctx, k[1], tokens...)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("devices: unregister device: %w", err)
	}
	return int(removed.Val()), nil
}

// List returns user's devices, the most recently registered first.
func (d *Registry) List(ctx context.Context, user string) ([]Device, error) {
	m, err := d.ListMany(ctx, user)
	if err != nil {
		return nil, err
	}
	return m[user], nil
}

// ListMany returns the devices of each user in one round trip. Users without
// devices are absent from the map.
func (d *Registry) ListMany(ctx context.Context, users ...string) (map[string][]Device, error) {
	type cmds struct {
		tokens    *redis.ZSliceCmd
		platforms *redis.MapStringStringCmd
	}
	all := make(map[string]cmds, len(users))
	_, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, u := range users {
			if _, dup := all[u]; dup {
				continue
			}
			k := d.keys(u)
			all[u] = cmds{p.ZRevRangeWithScores(ctx, k[0], 0, -1), p.HGetAll(ctx, k[1])}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("devices: list devices: %w", err)
	}
	out := make(map[string][]Device, len(all))
	for u, c := range all {
		platforms := c.platforms.Val()
		for _, z := range c.tokens.Val() {
			token, _ := z.Member.(string)
			out[u] = append(out[u], Device{
				Token:        token,
				Platform:     platforms[token],
				RegisteredAt: time.UnixMilli(int64(z.Score)),
			})
		}
	}
	return out, nil
}

// Lookup is a read of one user's devices queued on a caller's pipeline by
// Queue, so that the caller reads them in the same round trip as keys of
// its own.
type Lookup struct {
	platforms *redis.MapStringStringCmd
}

// Queue queues on p a read of user's devices, for Lookup.Devices once p
// has run. It reads the platform hash only, one command a user where
// ListMany sends two: the hash holds the same tokens as the set of
// registration times (the register script, its eviction and Unregister
// change both, and renew both expiries), so the devices come without
// RegisteredAt and in no particular order.
func (d *Registry) Queue(ctx context.Context, p redis.Pipeliner, user string) Lookup {
	return Lookup{p.HGetAll(ctx, d.keys(user)[1])}
}

// Devices are the devices read, once the pipeline has run.
func (l Lookup) Devices() ([]Device, error) {
	platforms, err := l.platforms.Result()
	if err != nil {
		return nil, fmt.Errorf("devices: list devices: %w", err)
	}
	if len(platforms) == 0 {
		return nil, nil
	}
	out := make([]Device, 0, len(platforms))
	for token, platform := range platforms {
		out = append(out, Device{Token: token, Platform: platform})
	}
	return out, nil
}

// String renders a device for logs without its token, which is a credential
// of sorts: only its last 6 characters.
func (dv Device) String() string {
	t := dv.Token
	if len(t) > 6 {
		t = "…" + t[len(t)-6:]
	}
	return dv.Platform + ":" + t + "@" + strconv.FormatInt(dv.RegisteredAt.UnixMilli(), 10)
}
