package delivery

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// The publisher's Lua scripts: one round trip per notification or broadcast.

// notifyScript is the whole online path in one round trip.
//
//	KEYS: presence, hist, last, floor, [idempotency key], [trace]
//	ARGV: channel, envelope, idempotency record, idempotency window ms,
//	      history length, window ms, keep ms, pending timeout ms,
//	      has idempotency key (1 or 0), trace ttl ms (0: no trace), user,
//	      correlation id, ack deadline ms (0: fire and forget)
//	KEYS with an ack deadline, after those: receipts, receipt envelopes
//
// With an idempotency key it first returns the stored record, if any. Then it
// records the envelope in the user's history, counts live leases, publishes
// when there is one, and stores "route|subscribers|event id|" .. ARGV[3]
// under the idempotency key, where ARGV[3] is "id|accepted ms|ack deadline
// ms" (0: fire and forget): a duplicate is answered with what was applied
// (see parseRecord). When the notification still has to be queued
// for the offline path (ARGV[8] > 0 and it was not published to anyone), it
// stores "pending|" .. ARGV[3] for ARGV[8] ms instead, and the caller stores
// the final record once the queue has taken it. With a trace key it starts
// the notification's trail there.
var notifyScript, shardedNotifyScript = publishScripts(luaCommon + `
local idem, trace
local k = 5
if ARGV[9] == '1' then idem = KEYS[k]; k = k + 1 end
if tonumber(ARGV[10]) > 0 then trace = KEYS[k]; k = k + 1 end
local receipts, envs
if tonumber(ARGV[13]) > 0 then receipts = KEYS[k]; envs = KEYS[k + 1] end
if idem then
  local prev = redis.call('GET', idem)
  if prev then return {'dup', prev} end
end
local eid, payload = record(KEYS[2], KEYS[3], KEYS[4], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local route = 'offline'
local subs = 0
if live > 0 then
  subs = redis.call('$PUBLISH', ARGV[1], payload)
  if subs > 0 then route = 'online' else route = 'stale' end
end
if idem then
  if route ~= 'online' and tonumber(ARGV[8]) > 0 then
    redis.call('SET', idem, 'pending|' .. ARGV[3], 'PX', ARGV[8])
  else
    redis.call('SET', idem, route .. '|' .. subs .. '|' .. eid .. '|' .. ARGV[3], 'PX', ARGV[4])
  end
end
if receipts and route == 'online' then
  local rid, racc = string.match(ARGV[3], '^(.*)|(%d+)|%d+$')
  redis.call('HSET', receipts, rid, 'pending|' .. eid .. '|' .. racc .. '|' .. ARGV[13])
  redis.call('HSET', envs, rid, payload)
  local keep = tonumber(ARGV[13]) - now + 3600000
  redis.call('PEXPIRE', receipts, keep)
  redis.call('PEXPIRE', envs, keep)
end
if trace then
  if ARGV[12] ~= '' then
    redis.call('HSET', trace, 'user', ARGV[11], 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid,
      'correlation_id', ARGV[12])
  else
    redis.call('HSET', trace, 'user', ARGV[11], 'accepted_ms', now, 'route', route, 'subscribers', subs, 'event_id', eid)
  end
  redis.call('PEXPIRE', trace, ARGV[10])
end
return {route, tostring(subs), eid}
`)

// broadcastScript records and publishes a topic message.
//
//	KEYS: hist, last, floor
//	ARGV: channel, envelope, history length, window ms, keep ms
var broadcastScript, shardedBroadcastScript = publishScripts(luaCommon + `
local eid, payload = record(KEYS[1], KEYS[2], KEYS[3], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
local subs = redis.call('$PUBLISH', ARGV[1], payload)
return {'online', tostring(subs), eid}
`)

// publishScripts returns src with $PUBLISH replaced by PUBLISH, and by
// SPUBLISH. On a Redis Cluster, PUBLISH reaches every node of the cluster;
// SPUBLISH reaches only the shard that owns the channel's slot, which is the
// slot of the stream's keys (they share its hash tag), so the script stays
// single-slot.
func publishScripts(src string) (classic, sharded *redis.Script) {
	return redis.NewScript(strings.ReplaceAll(src, "$PUBLISH", "PUBLISH")),
		redis.NewScript(strings.ReplaceAll(src, "$PUBLISH", "SPUBLISH"))
}

// Sharded reports whether rdb is a Redis Cluster client, on which streams
// use sharded pub/sub (SPUBLISH and SSUBSCRIBE).
func Sharded(rdb redis.Cmdable) bool {
	_, ok := rdb.(*redis.ClusterClient)
	return ok
}

// abandonScript deletes a pending idempotency record if it is still ours.
var abandonScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
