// Package history reads the streams' event histories that the publisher
// (package delivery) records, for Last-Event-ID recovery: what a
// reconnecting client missed, a page at a time, or a reset when Redis may
// have lost it (epochs, epoch.go).
package history

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
)

// sinceScript answers where a client at event id ARGV[1] stands in the
// stream with keys history, last (delivery.HistoryKeys), and its slot's
// epoch key:
//
//	{'pos', P}          ARGV[1] is empty: P is the position to start from
//	{'ok', P, e1, ...}  the events after ARGV[1], in order; P is the newest id
//	{'reset', P}        events after ARGV[1] may be lost; P is the newest id
//	{'more', P, e1, ...} a page of the events after ARGV[1]; P is the last's id
//
// ARGV[2], ARGV[3] are the history window and keep, in ms; ARGV[4], ARGV[5]
// bound a page (see Page). A client whose position the keys cannot account
// for, because Redis lost history, is reset (epoch.go).
//
// It runs after delivery.LuaCommon and epoch.lua.
//
//go:embed since.lua
var sinceLua string

var sinceScript = redis.NewScript(delivery.LuaCommon() + epochLua + sinceLua)

// Reader reads the streams' histories for Last-Event-ID recovery.
type Reader struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    delivery.HistoryConfig
}

// New returns a Reader of the histories of the streams under prefix,
// bounded as cfg says (the zero value of each field means its default; the
// publisher must have the same bounds).
func New(rdb redis.UniversalClient, prefix string, cfg delivery.HistoryConfig) (*Reader, error) {
	if rdb == nil {
		return nil, errors.New("history: history needs a redis client")
	}
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &Reader{rdb: rdb, prefix: prefix, cfg: cfg}, nil
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

// Since reports what a client positioned at event id after (0 < after) has
// missed in each stream, in one pipeline. With after == nil for a stream,
// it reports only the stream's current position: the place from which a new
// client starts.
func (h *Reader) Since(ctx context.Context, streams []delivery.Stream, after []*uint64) ([]Replay, error) {
	return h.SincePage(ctx, streams, after, Page{})
}

// SincePage is Since with each stream's events cut to page: a cut stream's
// Replay has More set, and its Position is the id of its last event, from
// which the next page is read.
func (h *Reader) SincePage(ctx context.Context, streams []delivery.Stream, after []*uint64, page Page) ([]Replay, error) {
	if page.Events < 0 || page.Bytes < 0 {
		return nil, errors.New("history: negative history page bound")
	}
	if len(streams) != len(after) {
		return nil, errors.New("history: streams and positions differ in length")
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
			keys := append(delivery.HistoryKeys(h.prefix, s), epochKey(h.prefix, s))
			cmds[i] = sinceScript.EvalSha(ctx, pipe, keys, args...)
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := sinceScript.Load(ctx, h.rdb).Err(); err != nil {
			return nil, fmt.Errorf("history: history: %w", err)
		}
		cmds, err = run()
	}
	if err != nil {
		return nil, fmt.Errorf("history: history: %w", err)
	}
	out := make([]Replay, len(streams))
	for i, cmd := range cmds {
		res, err := cmd.StringSlice()
		if err != nil || len(res) < 2 {
			return nil, fmt.Errorf("history: history of %v: unexpected reply %q: %v", streams[i], res, err)
		}
		pos, err := strconv.ParseUint(res[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("history: history of %v: %w: %q", streams[i], delivery.ErrBadEventID, res[1])
		}
		out[i] = Replay{Position: pos, Reset: res[0] == "reset", More: res[0] == "more"}
		for _, e := range res[2:] {
			out[i].Events = append(out[i].Events, []byte(e))
		}
	}
	return out, nil
}
