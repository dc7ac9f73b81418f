package delivery

import (
	_ "embed"
	"fmt"
	"time"

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

// HashTag is the Redis Cluster hash tag that every key and the channel of
// the stream share, so that one script can touch them all in one slot.
func (s Stream) HashTag() string {
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
func Channel(prefix string, s Stream) string { return prefix + s.HashTag() + ":events" }

// HistoryKeys are the stream's history and its last event id. The history
// is a Redis stream: one entry per event, its entry id the event id split
// as <id / 1000>-<id % 1000>, with the envelope (field d) and the id of the
// event before it (field p), from which a reader learns the floor: the
// newest event no longer in the history, below which a client cannot be
// told what it missed (see LuaCommon). The publisher writes them; package
// delivery/history reads them.
//
// The history key is named :log: earlier Herald kept a sorted set under
// :hist, which a new name leaves to expire (docs/deploy.md, upgrading).
func HistoryKeys(prefix string, s Stream) []string {
	base := prefix + s.HashTag()
	return []string{base + ":log", base + ":last"}
}

// The history bounds that HistoryConfig's zero values stand for.
const (
	DefaultHistoryLength = 100
	DefaultHistoryWindow = 10 * time.Minute
	DefaultHistoryKeep   = 24 * time.Hour
)

// HistoryConfig bounds the history kept for Last-Event-ID recovery. The
// publisher, which writes it, and the edges' history readers
// (delivery/history) must agree on it.
type HistoryConfig struct {
	// Length is the fewest events kept per stream, as long as the window
	// allows: Redis trims a stream in whole nodes (XADD MAXLEN ~), so it
	// holds at most a node more (stream-node-max-entries, 100 by default,
	// or stream-node-max-bytes, 4 KiB), and readers serve those too.
	// Default 100: far more than a client misses in a reconnect, and small
	// enough (about 100 × the payload size per active user) to keep in
	// Redis memory.
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

// WithDefaults returns c with each zero field set to its default, or an
// error when the result is not a valid bound.
func (c HistoryConfig) WithDefaults() (HistoryConfig, error) {
	if c.Length == 0 {
		c.Length = DefaultHistoryLength
	}
	if c.Window == 0 {
		c.Window = DefaultHistoryWindow
	}
	if c.Keep == 0 {
		c.Keep = DefaultHistoryKeep
	}
	if c.Length < 1 || c.Window < time.Millisecond || c.Keep < c.Window {
		return c, fmt.Errorf("delivery: invalid history config %+v: want length >= 1, window >= 1ms, keep >= window", c)
	}
	return c, nil
}

func (c HistoryConfig) args() []any {
	return []any{c.Length, c.Window.Milliseconds(), c.Keep.Milliseconds()}
}

// LuaCommon returns the Lua that the scripts which record and replay events
// begin with (common.lua): Redis' clock as now, fmt, and record. Event ids
// are decimal numbers: a stream's first event gets Redis' time in
// milliseconds × 1000, and each next one max(previous + 1, now × 1000), so
// ids increase per stream and stay meaningful across restarts. Ids that end
// in 999 are skipped: they are start positions (see delivery/history).
func LuaCommon() string { return commonLua }

//go:embed common.lua
var commonLua string
