package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/presence"
)

// Stream is one ordered history of events with a Pub/Sub channel of its own:
// every user has one, and so has every broadcast topic.
type Stream struct {
	User  string // the user, for a user's stream
	Topic string // the topic, for a topic's stream
}

// UserStream is user's stream.
func UserStream(user string) Stream { return Stream{User: user} }

// TopicStream is topic's stream.
func TopicStream(topic string) Stream { return Stream{Topic: topic} }

// hashTag is the Redis Cluster hash tag that every key and the channel of the
// stream share, so that one script can touch them all in one slot.
func (s Stream) hashTag() string {
	if s.Topic != "" {
		return "{t:" + presence.EscapeKeyPart(s.Topic) + "}"
	}
	return presence.HashTag(s.User)
}

func (s Stream) String() string {
	if s.Topic != "" {
		return "topic " + s.Topic
	}
	return "user " + s.User
}

// Channel is the stream's Redis Pub/Sub channel under prefix.
func Channel(prefix string, s Stream) string { return prefix + s.hashTag() + ":events" }

// historyKeys are the stream's history (a sorted set of envelopes scored by
// event id), its last event id, and its floor: below the floor, events may
// have been trimmed, so a client there cannot be told what it missed.
func historyKeys(prefix string, s Stream) []string {
	base := prefix + s.hashTag()
	return []string{base + ":hist", base + ":last", base + ":floor"}
}

// HistoryConfig bounds the history kept for Last-Event-ID recovery.
type HistoryConfig struct {
	// Length is the most events kept per stream. Default 100: far more than
	// a client misses in a reconnect, and small enough (about 100 × the
	// payload size per active user) to keep in Redis memory.
	Length int
	// Window is how long an event is kept. Default 10 minutes: a client away
	// longer than that re-fetches its state (it gets herald.reset) instead of
	// a flood of stale events.
	Window time.Duration
	// Keep is how long a stream's last event id is remembered after its last
	// event, and a start position after it was given out. Default 24h: a
	// client that reconnects after a quiet period learns that it missed
	// nothing, instead of a needless reset.
	Keep time.Duration
}

func (c *HistoryConfig) setDefaults() error {
	if c.Length == 0 {
		c.Length = 100
	}
	if c.Window == 0 {
		c.Window = 10 * time.Minute
	}
	if c.Keep == 0 {
		c.Keep = 24 * time.Hour
	}
	if c.Length < 1 || c.Window < time.Millisecond || c.Keep < c.Window {
		return fmt.Errorf("delivery: invalid history config %+v: want length >= 1, window >= 1ms, keep >= window", *c)
	}
	return nil
}

func (c HistoryConfig) args() []any {
	return []any{c.Length, c.Window.Milliseconds(), c.Keep.Milliseconds()}
}

// luaCommon holds the Lua shared by the scripts that record and replay
// events. Event ids are decimal numbers: a stream's first event gets Redis'
// time in milliseconds × 1000, and each next one max(previous + 1, now ×
// 1000), so ids increase per stream and stay meaningful across restarts.
// Ids that end in 999 are skipped: they are start positions (luaEpoch).
const luaCommon = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end

-- record adds envelope to the history in keys hist, last, floor, trims it
-- to window ms and maxlen entries, and returns the event id and the envelope
-- with its event_id field (9) set.
--
-- The floor is the newest id no longer in the history (trimmed, or expired
-- with the key). Ids only grow, and trimming takes the oldest, so it only
-- ever rises: it is set without being read. It is kept keep ms (plus a
-- minute for ids ahead of the clock) after it was set, not refreshed on
-- every event: by the time it expires it is below the window's own bound,
-- which readers apply anyway (see sinceScript).
local function record(hist, lastk, floork, envelope, maxlen, window, keep)
  local last = tonumber(redis.call('GET', lastk))
  local id = now * 1000
  if last ~= nil and last >= id then id = last + 1 end
  if id % 1000 == 999 then id = id + 1 end
  local sid = fmt(id)
  redis.call('SET', lastk, sid, 'PX', keep)
  -- event_id is field 9, length-delimited (tag 9 * 8 + 2 = 74); an id of
  -- at most 20 digits has a one-byte length.
  local payload = envelope .. string.char(74, #sid) .. sid
  redis.call('ZADD', hist, sid, payload)
  local floor
  local cutoff = (now - window) * 1000
  if redis.call('ZREMRANGEBYSCORE', hist, '-inf', fmt(cutoff)) > 0 then
    floor = cutoff
  end
  local n = redis.call('ZCARD', hist)
  if n == 1 and last ~= nil then
    -- Every earlier event is gone: trimmed, or expired with the key.
    floor = last
  end
  local extra = n - maxlen
  if extra > 0 then
    -- The oldest extra events go; the last one popped is the newest of
    -- them.
    local gone = redis.call('ZPOPMIN', hist, extra)
    floor = tonumber(gone[#gone])
  end
  if floor then redis.call('SET', floork, fmt(floor), 'PX', keep + 60000) end
  redis.call('PEXPIRE', hist, window)
  return sid, payload
end
`

// sinceScript answers where a client at event id ARGV[1] stands in the
// stream with keys hist, last, floor, and its slot's epoch key:
//
//	{'pos', P}          ARGV[1] is empty: P is the position to start from
//	{'ok', P, e1, ...}  the events after ARGV[1], in order; P is the newest id
//	{'reset', P}        events after ARGV[1] may be lost; P is the newest id
//	{'more', P, e1, ...} a page of the events after ARGV[1]; P is the last's id
//
// ARGV[2], ARGV[3] are the history window and keep, in ms; ARGV[4], ARGV[5]
// bound a page (see Page). A client whose position the keys cannot account
// for, because Redis lost history, is reset (luaEpoch).
var sinceScript = redis.NewScript(luaCommon + luaEpoch + `
local window, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[2]))
local start = fmt(now * 1000 - 1)
if ARGV[1] == '' then
  if last then return {'pos', fmt(last)} end
  epochOf(KEYS[4], true, keep)
  return {'pos', start}
end
local L = tonumber(ARGV[1])
if last == nil then
  -- Nothing was recorded within keep: nothing was missed by a client at a
  -- start position within keep, of this epoch.
  local epoch = epochOf(KEYS[4], true, keep)
  if L and isStart(L) and L >= epoch and L >= (now - keep) * 1000 then return {'ok', fmt(L)} end
  return {'reset', start}
end
if L == nil then return {'reset', fmt(last)} end
if L == last then return {'ok', fmt(last)} end
if L > last then return {'reset', fmt(last)} end
local floor = math.max(tonumber(redis.call('GET', KEYS[3])) or 0, (now - window) * 1000)
if L < floor then return {'reset', fmt(last)} end
if L > floor and not placed(KEYS[1], KEYS[4], L, keep) then return {'reset', fmt(last)} end
local out = {'ok', fmt(last)}
-- A page: at most ARGV[4] events (0: all) and, past the first, ARGV[5]
-- bytes (0: any). A cut page is 'more', positioned at its last event.
local count, budget = tonumber(ARGV[4]) or 0, tonumber(ARGV[5]) or 0
local args = {'ZRANGEBYSCORE', KEYS[1], '(' .. fmt(L), '+inf', 'WITHSCORES'}
if count > 0 then
  args[#args + 1] = 'LIMIT'; args[#args + 1] = 0; args[#args + 1] = count
end
local r, size, upto = redis.call(unpack(args)), 0, nil
for i = 1, #r, 2 do
  size = size + #r[i]
  if budget > 0 and i > 1 and size > budget then break end
  out[#out + 1] = r[i]
  upto = tonumber(r[i + 1])
end
if upto and upto < last then out[1], out[2] = 'more', fmt(upto) end
return out
`)

// History reads the streams' histories for Last-Event-ID recovery.
type History struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    HistoryConfig
}

// NewHistory returns a History of the streams under prefix.
func NewHistory(rdb redis.UniversalClient, prefix string, cfg HistoryConfig) (*History, error) {
	if rdb == nil {
		return nil, errors.New("delivery: history needs a redis client")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &History{rdb: rdb, prefix: prefix, cfg: cfg}, nil
}

// Replay is where a client stands in one stream.
type Replay struct {
	// Position is the stream's newest event id after Events (the position to
	// go on from).
	Position uint64
	// Reset is set when events after the client's position may be lost.
	Reset bool
	// Events are the envelopes (with EventId set) the client missed, oldest
	// first.
	Events [][]byte
	// More is set when Events is a page cut by a Page's bounds: more events
	// follow Position.
	More bool
}

// Page bounds one read of a stream's history. The zero value reads it all.
type Page struct {
	// Events is the most events read; 0 means no limit.
	Events int
	// Bytes is the most envelope bytes read, past the first event (which is
	// always read, however large); 0 means no limit.
	Bytes int
}

// ErrBadEventID is returned for an event id that is not a decimal number.
var ErrBadEventID = errors.New("delivery: malformed event id")

// Since reports what a client positioned at event id after (0 < after) has
// missed in each stream, in one pipeline. With after == nil for a stream,
// it reports only the stream's current position: the place from which a new
// client starts.
func (h *History) Since(ctx context.Context, streams []Stream, after []*uint64) ([]Replay, error) {
	return h.SincePage(ctx, streams, after, Page{})
}

// SincePage is Since with each stream's events cut to page: a cut stream's
// Replay has More set, and its Position is the id of its last event, from
// which the next page is read.
func (h *History) SincePage(ctx context.Context, streams []Stream, after []*uint64, page Page) ([]Replay, error) {
	if page.Events < 0 || page.Bytes < 0 {
		return nil, errors.New("delivery: negative history page bound")
	}
	if len(streams) != len(after) {
		return nil, errors.New("delivery: streams and positions differ in length")
	}
	run := func() ([]*redis.Cmd, error) {
		pipe := h.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(streams))
		for i, s := range streams {
			pos := ""
			if after[i] != nil {
				pos = strconv.FormatUint(*after[i], 10)
			}
			args := []any{pos, h.cfg.Window.Milliseconds(), h.cfg.Keep.Milliseconds(), page.Events, page.Bytes}
			keys := append(historyKeys(h.prefix, s), epochKey(h.prefix, s))
			cmds[i] = sinceScript.EvalSha(ctx, pipe, keys, args...)
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := sinceScript.Load(ctx, h.rdb).Err(); err != nil {
			return nil, fmt.Errorf("delivery: history: %w", err)
		}
		cmds, err = run()
	}
	if err != nil {
		return nil, fmt.Errorf("delivery: history: %w", err)
	}
	out := make([]Replay, len(streams))
	for i, cmd := range cmds {
		res, err := cmd.StringSlice()
		if err != nil || len(res) < 2 {
			return nil, fmt.Errorf("delivery: history of %v: unexpected reply %q: %v", streams[i], res, err)
		}
		pos, err := strconv.ParseUint(res[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("delivery: history of %v: %w: %q", streams[i], ErrBadEventID, res[1])
		}
		out[i] = Replay{Position: pos, Reset: res[0] == "reset", More: res[0] == "more"}
		for _, e := range res[2:] {
			out[i].Events = append(out[i].Events, []byte(e))
		}
	}
	return out, nil
}

// ParseEventID parses an event id.
func ParseEventID(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadEventID, s)
	}
	return n, nil
}
