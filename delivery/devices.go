package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Device is one of a user's devices: an FCM registration token.
type Device struct {
	Token        string
	Platform     string // "android", "ios" or "web"
	RegisteredAt time.Time
}

// DevicesConfig configures a Devices registry. The zero value of each field
// means the documented default.
type DevicesConfig struct {
	// Prefix namespaces the keys, as presence.Config.Prefix does. Default
	// "herald:".
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

// ErrInvalidDevice is returned for a token or platform that cannot be stored.
var ErrInvalidDevice = errors.New("delivery: invalid device")

// Devices is the registry of users' FCM tokens. A user's tokens live in one
// sorted set (token → registration time in ms) and one hash (token →
// platform), both under the user's hash tag, so that a user's devices share a
// Redis Cluster slot with the rest of the user's keys.
type Devices struct {
	rdb redis.UniversalClient
	cfg DevicesConfig
}

// NewDevices returns a device registry stored through rdb.
func NewDevices(rdb redis.UniversalClient, cfg DevicesConfig) (*Devices, error) {
	if rdb == nil {
		return nil, errors.New("delivery: devices need a redis client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "herald:"
	}
	if cfg.MaxPerUser == 0 {
		cfg.MaxPerUser = 10
	}
	if cfg.TTL == 0 {
		cfg.TTL = 270 * 24 * time.Hour
	}
	if cfg.MaxPerUser < 1 || cfg.TTL < time.Second {
		return nil, fmt.Errorf("delivery: invalid devices config %+v", cfg)
	}
	return &Devices{rdb: rdb, cfg: cfg}, nil
}

func (d *Devices) keys(user string) []string {
	return deviceKeys(d.cfg.Prefix, user)
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
var registerScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local evicted = 0
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], extra)
  for i = 1, #old, 2 do
    redis.call('HDEL', KEYS[2], old[i])
    evicted = evicted + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {redis.call('ZCARD', KEYS[1]), evicted}
`)

// Register adds token to user's devices, or refreshes it. It returns how many
// devices the user has and how many old tokens were evicted to make room.
func (d *Devices) Register(ctx context.Context, user, token, platform string) (devices, evicted int, err error) {
	if err := CheckUserID(user); err != nil {
		return 0, 0, fmt.Errorf("%w: user %v", ErrInvalidDevice, err)
	}
	if err := CheckToken(token); err != nil {
		return 0, 0, fmt.Errorf("%w: token %v", ErrInvalidDevice, err)
	}
	if !validPlatform(platform) {
		return 0, 0, fmt.Errorf("%w: platform %q is not one of %s", ErrInvalidDevice, platform, strings.Join(Platforms, ", "))
	}
	res, err := registerScript.Run(ctx, d.rdb, d.keys(user), token, platform, d.cfg.MaxPerUser, d.cfg.TTL.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("delivery: register device: %w", err)
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
func (d *Devices) Unregister(ctx context.Context, user string, tokens ...string) (int, error) {
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
		return 0, fmt.Errorf("delivery: unregister device: %w", err)
	}
	return int(removed.Val()), nil
}

// List returns user's devices, the most recently registered first.
func (d *Devices) List(ctx context.Context, user string) ([]Device, error) {
	m, err := d.ListMany(ctx, user)
	if err != nil {
		return nil, err
	}
	return m[user], nil
}

// ListMany returns the devices of each user in one round trip. Users without
// devices are absent from the map.
func (d *Devices) ListMany(ctx context.Context, users ...string) (map[string][]Device, error) {
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
		return nil, fmt.Errorf("delivery: list devices: %w", err)
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

// String renders a device for logs without its token, which is a credential
// of sorts: only its last 6 characters.
func (dv Device) String() string {
	t := dv.Token
	if len(t) > 6 {
		t = "…" + t[len(t)-6:]
	}
	return dv.Platform + ":" + t + "@" + strconv.FormatInt(dv.RegisteredAt.UnixMilli(), 10)
}
