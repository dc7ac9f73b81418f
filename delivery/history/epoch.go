package history

import (
	_ "embed"
	"strconv"
	"sync"

	"github.com/herald-push/herald/delivery"
)

// History epochs: telling a client whose history Redis lost.
//
// A Redis that restarts without its data (no append-only file), rolls back
// to an older snapshot, or fails over to a replica that lacked the newest
// writes, loses history and leaves no trace of it in the keys that remain.
// A client that comes back with a position from before the loss must get a
// reset, not an empty or partial replay that looks complete. sinceScript
// decides it from the keys of the client's stream and of the stream's hash
// slot, so that it works unchanged on a Redis Cluster; the cursor is not
// changed.
//
// A position is either an event id or a start position: the one a stream
// with no event within keep gives a new client, now × 1000 - 1. Event ids
// never end in 999 (record skips those), so the two can be told apart.
//
//   - An event id above the stream's floor must still be in its history or
//     be its last id: events leave the history only by trimming, which
//     raises the floor to them, or with the whole key, after which the next
//     event sets the floor to the last id. So must an event id within keep
//     when the stream has no last id: the last id is kept keep ms after the
//     newest event. An event id the keys do not account for was lost, and
//     events after it may be lost too.
//   - A start position is fine while nothing came after it, or while the
//     stream's oldest event is newer than it: unless Redis lost data since
//     it was given out. For that, each hash slot has an epoch key, set to
//     the start position of the first reader that found none. A reader that
//     gives out a start position keeps the epoch at least keep ms longer, so
//     that a start position within keep is never below the epoch of its own
//     Redis; one below the epoch was given out by a Redis that lost its data
//     since.
//
// What no rule can see is an event lost before any client had it, with the
// client's position still the newest that the keys know: that needs
// persistence (docs/deploy.md).
//
// The epoch keys are one per hash slot in use, at most 16384 per prefix, of
// about 100 bytes each; the tag that puts one in a slot is not a client's
// to choose.
//
// epoch.lua holds the Lua of it, which since.lua calls.
//
//go:embed epoch.lua
var epochLua string

// epochKey is the epoch key of the hash slot of s's keys under prefix.
func epochKey(prefix string, s delivery.Stream) string {
	n := slotTags()[delivery.KeySlot(prefix+s.HashTag())]
	return prefix + "{e:" + strconv.FormatUint(uint64(n), 36) + "}:epoch"
}

// slotTags maps each hash slot to the n whose tag "e:<n in base 36>" hashes
// to it.
var slotTags = sync.OnceValue(func() []uint32 {
	tags := make([]uint32, delivery.NumSlots)
	found := make([]bool, delivery.NumSlots)
	left := delivery.NumSlots
	for n := uint32(0); left > 0; n++ {
		// A key without braces is hashed whole.
		slot := delivery.KeySlot("e:" + strconv.FormatUint(uint64(n), 36))
		if !found[slot] {
			found[slot], tags[slot] = true, n
			left--
		}
	}
	return tags
})
