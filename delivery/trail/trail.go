// Package trail reads and adds to the trail of one notification: the Redis
// hash (delivery.TraceKey) where the router records its decision and the
// edges and the FCM worker what they did with it, for heraldctl trace.
package trail

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
)

// Record is what Redis knows of one notification.
type Record struct {
	ID     string
	Key    string
	Fields map[string]string
}

// Time reads a field that holds Unix milliseconds.
func (t Record) Time(field string) time.Time {
	ms, err := strconv.ParseInt(t.Fields[field], 10, 64)
	if err != nil || ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// ErrNotKept is returned when no trail of a notification is kept: it is
// older than the trace TTL, or the id is wrong.
var ErrNotKept = errors.New("trail: no trail of that notification (older than the trace TTL, or a wrong id)")

// Find returns the trail of notification id. With the user, it is one
// HGETALL; without, it scans the keyspace for the id (SCAN, on every primary
// of a cluster), which takes a while on a large Redis.
func Find(ctx context.Context, rdb redis.UniversalClient, prefix, user, id string) (Record, error) {
	if user != "" {
		return read(ctx, rdb, id, delivery.TraceKey(prefix, user, id))
	}
	pattern := keyPattern(prefix, id)
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
		return Record{}, fmt.Errorf("trail: cannot scan a %T", rdb)
	}
	if err != nil {
		return Record{}, fmt.Errorf("trail: find trace: %w", err)
	}
	if len(found) == 0 {
		return Record{}, ErrNotKept
	}
	return read(ctx, rdb, id, found[0])
}

func read(ctx context.Context, rdb redis.UniversalClient, id, key string) (Record, error) {
	m, err := rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return Record{}, fmt.Errorf("trail: read trace: %w", err)
	}
	if len(m) == 0 {
		return Record{}, ErrNotKept
	}
	return Record{ID: id, Key: key, Fields: m}, nil
}

// keyPattern is the SCAN pattern of notification id's trail, whoever its
// user: no user tag holds a '}', and nothing after a tag does, so the '*'
// spans exactly the user's part of the tag.
func keyPattern(prefix, id string) string {
	return escapeGlob(prefix) + "{u:*}:trace:" + escapeGlob(presence.EscapeKeyPart(id))
}

// escapeGlob escapes SCAN's pattern characters.
func escapeGlob(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// addLua sets fields of a trail that exists, keeping its expiry; a trail
// that expired (or was never kept) stays gone.
//
//go:embed add.lua
var addLua string

// Add queues on c the setting of fields (name, value, ...) in the trail of
// notification id for user, if the trail is kept.
func Add(ctx context.Context, c redis.Cmdable, prefix, user, id string, fields ...any) {
	c.Eval(ctx, addLua, []string{delivery.TraceKey(prefix, user, id)}, fields...)
}
