package sseedge

import (
	"strconv"
	"strings"

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
