package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultTraceTTL is how long a notification's trail is kept by default.
const DefaultTraceTTL = 15 * time.Minute

// Trace is what Redis knows of one notification.
type Trace struct {
	ID     string
	Key    string
	Fields map[string]string
}

// Time reads a field that holds Unix milliseconds.
func (t Trace) Time(field string) time.Time {
	ms, err := strconv.ParseInt(t.Fields[field], 10, 64)
	if err != nil || ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// ErrNoTrace is returned when no trail of a notification is kept: it is
// older than the trace TTL, or the id is wrong.
var ErrNoTrace = errors.New("delivery: no trail of that notification (older than the trace TTL, or a wrong id)")

// FindTrace returns the trail of notification id. With the user, it is one
// HGETALL; without, it scans the keyspace for the id (SCAN, on every primary
// of a cluster), which takes a while on a large Redis.
func FindTrace(ctx context.Context, rdb redis.UniversalClient, prefix, user, id string) (Trace, error) {
	if user != "" {
		return readTrace(ctx, rdb, id, TraceKey(prefix, user, id))
	}
	pattern := traceKeyPattern(prefix, id)
	var (
		mu    sync.Mutex // ForEachMaster scans the primaries concurrently
		found []string
	)
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, pattern, 10000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			found = append(found, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, scan)
	} else if c, ok := rdb.(*redis.Client); ok {
		err = scan(ctx, c)
	} else {
		return Trace{}, fmt.Errorf("delivery: cannot scan a %T", rdb)
	}
	if err != nil {
		return Trace{}, fmt.Errorf("delivery: find trace: %w", err)
	}
	if len(found) == 0 {
		return Trace{}, ErrNoTrace
	}
	return readTrace(ctx, rdb, id, found[0])
}

func readTrace(ctx context.Context, rdb redis.UniversalClient, id, key string) (Trace, error) {
	m, err := rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return Trace{}, fmt.Errorf("delivery: read trace: %w", err)
	}
	if len(m) == 0 {
		return Trace{}, ErrNoTrace
	}
	return Trace{ID: id, Key: key, Fields: m}, nil
}

// escapeGlob escapes SCAN's pattern characters.
func escapeGlob(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// traceAddScript sets fields of a trail that exists, keeping its expiry; a
// trail that expired (or was never kept) stays gone.
const traceAddScript = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0`

// AddTrace queues on c the setting of fields (name, value, ...) in the trail
// of notification id for user, if the trail is kept.
func AddTrace(ctx context.Context, c redis.Cmdable, prefix, user, id string, fields ...any) {
	c.Eval(ctx, traceAddScript, []string{TraceKey(prefix, user, id)}, fields...)
}
