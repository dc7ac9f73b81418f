package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Edge is an edge's announcement of itself, for operators: which edges are
// live, what they run and how loaded they are.
type Edge struct {
	ID          string    `json:"id"`
	Version     string    `json:"version"`
	Addr        string    `json:"addr"`        // where it serves SSE
	Started     time.Time `json:"started"`     // when it started serving
	Connections int       `json:"connections"` // SSE streams open on it
	Draining    bool      `json:"draining"`    // shutting down: refusing new streams
	Updated     time.Time `json:"updated"`     // when the edge wrote this record, on its clock
	// Expires is when the record runs out unless the edge announces itself
	// again, on Redis' clock. Filled by Edges; ignored by Announce.
	Expires time.Time `json:"expires,omitzero"`
}

// ErrInvalidEdge is returned for an Edge that cannot be announced.
var ErrInvalidEdge = errors.New("presence: invalid edge")

// edgesTag keeps the edge registry's two keys in one Redis Cluster slot, so
// that one script can read and write both.
const edgesTag = "{edges}"

// EdgesKey is the sorted set of live edges: edge id → record deadline in
// milliseconds, on Redis' clock.
func (r *Registry) EdgesKey() string { return r.cfg.Prefix + edgesTag }

// EdgesInfoKey is the hash of the edges' records: edge id → Edge as JSON.
func (r *Registry) EdgesInfoKey() string { return r.cfg.Prefix + edgesTag + ":info" }

// announceScript stores the record ARGV[3] of edge ARGV[2] with a deadline of
// Redis' now + ARGV[1] ms, forgets the edges whose deadline has passed, and
// sets both keys to expire with the last deadline.
//
//	KEYS: edges, edges info
var announceScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #dead do
  redis.call('ZREM', KEYS[1], dead[i])
  redis.call('HDEL', KEYS[2], dead[i])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
`)

// edgesScript returns the live edges as id, deadline, record triples.
var edgesScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local rec = redis.call('HGET', KEYS[2], live[i])
  if rec then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = rec
  end
end
return out
`)

// Announce stores e as a live edge, or refreshes its record. The record
// lives as long as a lease (LeaseTTL): an edge announces itself every
// RenewInterval, so a record survives two missed renewals, and a dead edge
// drops out of Edges as its users drop out of presence.
func (r *Registry) Announce(ctx context.Context, e Edge) error {
	if e.ID == "" {
		return fmt.Errorf("%w: an id is required", ErrInvalidEdge)
	}
	e.Expires = time.Time{}
	rec, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("presence: announce: %w", err)
	}
	keys := []string{r.EdgesKey(), r.EdgesInfoKey()}
	if err := announceScript.Run(ctx, r.rdb, keys, r.cfg.LeaseTTL.Milliseconds(), e.ID, rec).Err(); err != nil {
		return fmt.Errorf("presence: announce: %w", err)
	}
	return nil
}

// Withdraw removes edge id's record at once, as a cleanly stopping edge does.
func (r *Registry) Withdraw(ctx context.Context, id string) error {
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, r.EdgesKey(), id)
		p.HDel(ctx, r.EdgesInfoKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("presence: withdraw: %w", err)
	}
	return nil
}

// Edges lists the live edges, by id. Records whose deadline has passed are
// left out, whether or not they are still stored.
func (r *Registry) Edges(ctx context.Context) ([]Edge, error) {
	res, err := edgesScript.Run(ctx, r.rdb, []string{r.EdgesKey(), r.EdgesInfoKey()}).Slice()
	if err != nil {
		return nil, fmt.Errorf("presence: edges: %w", err)
	}
	var out []Edge
	for i := 0; i+2 < len(res); i += 3 {
		id, _ := res[i].(string)
		score, _ := res[i+1].(string)
		rec, _ := res[i+2].(string)
		deadline, err := strconv.ParseFloat(score, 64)
		if err != nil {
			continue
		}
		var e Edge
		if err := json.Unmarshal([]byte(rec), &e); err != nil {
			// A record this version cannot read still names a live edge.
			e = Edge{Version: "(unreadable record)"}
		}
		e.ID = id
		e.Expires = time.UnixMilli(int64(deadline))
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Edge) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
