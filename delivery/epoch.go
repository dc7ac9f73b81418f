package delivery

import (
	"strconv"
	"strings"
	"sync"
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
const luaEpoch = `
-- epochOf returns the epoch of the slot of key k: the start position of the
-- first reader that found none. If started, a start position is being given
-- out, and the epoch is kept at least keep ms from now: it is kept 2 × keep
-- and renewed when less than keep is left, so that it is written once per
-- keep at most, not on every reconnect.
local function epochOf(k, started, keep)
  local e = tonumber(redis.call('GET', k))
  if e == nil then
    e = now * 1000 - 1
    redis.call('SET', k, fmt(e), 'PX', 2 * keep)
  elseif started and redis.call('PTTL', k) < keep then
    redis.call('PEXPIRE', k, 2 * keep)
  end
  return e
end

-- isStart reports whether position L is a start position.
local function isStart(L) return L % 1000 == 999 end

-- placed reports whether position L, above the floor and below the last id
-- of the stream with history hist and epoch key epochk, is one the history
-- accounts for: an event in it, or a start position of this epoch before
-- its oldest event.
local function placed(hist, epochk, L, keep)
  if not isStart(L) then
    return redis.call('ZCOUNT', hist, fmt(L), fmt(L)) > 0
  end
  if L < epochOf(epochk, false, keep) then return false end
  local oldest = redis.call('ZRANGE', hist, 0, 0, 'WITHSCORES')
  return oldest[2] ~= nil and L < tonumber(oldest[2])
end
`

// numSlots is the number of Redis Cluster hash slots.
const numSlots = 16384

// epochKey is the epoch key of the hash slot of s's keys under prefix.
func epochKey(prefix string, s Stream) string {
	n := slotTags()[KeySlot(prefix+s.hashTag())]
	return prefix + "{e:" + strconv.FormatUint(uint64(n), 36) + "}:epoch"
}

// slotTags maps each hash slot to the n whose tag "e:<n in base 36>" hashes
// to it.
var slotTags = sync.OnceValue(func() []uint32 {
	tags := make([]uint32, numSlots)
	found := make([]bool, numSlots)
	left := numSlots
	for n := uint32(0); left > 0; n++ {
		slot := crc16("e:"+strconv.FormatUint(uint64(n), 36)) % numSlots
		if !found[slot] {
			found[slot], tags[slot] = true, n
			left--
		}
	}
	return tags
})

// KeySlot is the Redis Cluster hash slot of key: the CRC16 of its hash tag
// (what is between the first { and the next }, if not empty), or else of
// the whole key, modulo 16384. The edge groups shard channels by it.
func KeySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % numSlots
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum
// of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
