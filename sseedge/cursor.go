package sseedge

import (
	"strconv"
	"strings"
	"time"

	"github.com/herald-push/herald/delivery"
)

// A cursor is what an SSE id carries: the client's position in each stream
// it reads. With the user's stream alone it is the event id ("1795662248194000");
// with topics it adds ";topic=id" for each ("1795662248194000;chat=1795662248190003").
// The browser sends the last one back as Last-Event-ID when it reconnects.

// parseCursor reads a Last-Event-ID into positions by stream name ("" is the
// user's stream). Parts that do not parse are ignored: the stream then
// starts afresh and, if events may have been missed, gets a reset.
func parseCursor(s string) map[string]uint64 {
	out := make(map[string]uint64)
	if s == "" {
		return out
	}
	parts := strings.Split(s, ";")
	if n, err := strconv.ParseUint(parts[0], 10, 64); err == nil {
		out[""] = n
	}
	for _, p := range parts[1:] {
		name, pos, ok := strings.Cut(p, "=")
		if !ok || !delivery.ValidTopic(name) {
			continue
		}
		if n, err := strconv.ParseUint(pos, 10, 64); err == nil {
			out[name] = n
		}
	}
	return out
}

// appendCursor appends the cursor for positions pos of streams names (names[0]
// is the user's stream, "").
func appendCursor(b []byte, names []string, pos []uint64) []byte {
	b = strconv.AppendUint(b, pos[0], 10)
	for i := 1; i < len(names); i++ {
		b = append(b, ';')
		b = append(b, names[i]...)
		b = append(b, '=')
		b = strconv.AppendUint(b, pos[i], 10)
	}
	return b
}

// cursorAhead is how far past this edge's clock a position may be. Event ids
// are Redis' clock in ms × 1000 (delivery's history), so a position further
// ahead was never sent: it comes from a corrupt or forged Last-Event-ID.
const cursorAhead = time.Hour

// checkCursor turns the user's position in a Last-Event-ID that the edge
// cannot have sent (unparsable, or in the future) into position 1, long
// gone from history: the client, whose state is unknown, gets a herald.reset
// and re-fetches it. Left alone, a future position would hide every event
// until the stream reached it, and acknowledge them all on reconnect.
func (s *Server) checkCursor(lastID string, cursor map[string]uint64) map[string]uint64 {
	if _, ok := cursor[""]; !ok && lastID != "" {
		cursor[""] = 1
	}
	limit := uint64(s.now().Add(cursorAhead).UnixMilli()) * 1000
	for name, pos := range cursor {
		if pos == 0 || pos > limit {
			cursor[name] = 1
		}
	}
	return cursor
}
