package delivery

import (
	_ "embed"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The publisher's Lua scripts, one .lua file each beside this one: one
// round trip per notification or broadcast.

// notifyLua is the whole online path in one round trip; it runs after
// common.lua.
//
//	KEYS: presence, history, last (HistoryKeys), [idempotency key], [trace]
//	ARGV: the publisher's settings (scriptConfigArgs of them): idempotency
//	      window ms, history length, window ms, keep ms, pending timeout ms;
//	      then the notification's: channel, envelope, and 0 (nothing more:
//	      no idempotency key, trace or ack deadline) or 1 and idempotency
//	      record, has idempotency key (1 or 0), trace ttl ms (0: no trace),
//	      user, correlation id, ack deadline ms (0: fire and forget), trace
//	      id (each argument costs Redis about a thousand instructions, so
//	      the plain notification sends three)
//	KEYS with an ack deadline, after those: receipts, receipt envelopes
//
// With an idempotency key it first returns the stored record, if any (and
// claims a refused one, or one left pending past the pending timeout,
// again: idemrecord.go). Then it
// records the envelope in the user's history, counts live leases, publishes
// when there is one, and stores "route|subscribers|event id|" .. record
// under the idempotency key, where the record is "id|accepted ms|ack deadline
// ms" (0: fire and forget): a duplicate is answered with what was applied
// (see parseRecord). When the notification still has to be queued
// for the offline path (a pending timeout > 0 and it was not published to
// anyone), it stores "pending|" .. now ms .. "|route|subscribers|event id|"
// .. record instead, and the caller stores the final record once the queue
// has taken it. With
// a trace key (a notification the publisher traces: see
// PublisherConfig.TraceRate) it starts the notification's trail there.
// Each Redis command it runs costs (about 1 µs each, on top of the script's
// own start): SET ... GET of the last id (and a second SET when several
// events share a millisecond), XADD (which trims whole nodes), ZCOUNT of
// the presence lease, and PUBLISH when there is one; PEXPIRE of the history
// once per tenth of its window; the idempotency, receipt and trail writes
// only when asked for.
//
//go:embed notify.lua
var notifyLua string

// scriptConfigArgs is how many of notifyLua's ARGV are the publisher's
// settings.
const scriptConfigArgs = 5

// notifyOneLua runs notify.lua's function for the script's KEYS and ARGV.
//
//go:embed notify_one.lua
var notifyOneLua string

// notifyBatchLua runs notify.lua's function for several notifications in
// one script, which carries the publisher's settings once: on a single
// Redis, a pipeline of notifications is one script call, which saves each
// notification the call's own cost: the script's start, TIME and the reply
// (docs/benchmarks.md). Its reply is flat, three values a notification (see
// flatReply). On a Redis Cluster, whose scripts must keep to one slot, each
// notification keeps its own script.
//
//go:embed notify_batch.lua
var notifyBatchLua string

// broadcastLua records and publishes a topic message; it runs after
// common.lua.
//
//	KEYS: history, last (HistoryKeys)
//	ARGV: channel, envelope, history length, window ms, keep ms
//
//go:embed broadcast.lua
var broadcastLua string

// abandonLua turns a pending idempotency record, if it is still ours, into
// a refused one (idemrecord.go).
//
//go:embed abandon.lua
var abandonLua string

// scripts are the publisher's scripts, for a classic Redis or a cluster.
// The ones that record and publish go out at most once (OnceScript).
type scripts struct {
	notify, notifyBatch, broadcast OnceScript
	abandon                        *redis.Script
}

// newScripts returns the publisher's scripts for rdb. In them, $PUBLISH is
// PUBLISH, or SPUBLISH on a Redis Cluster: PUBLISH reaches every node of
// the cluster; SPUBLISH reaches only the shard that owns the channel's
// slot, which is the slot of the stream's keys (they share its hash tag),
// so the script stays single-slot.
func newScripts(rdb redis.Cmdable) scripts {
	publish := "PUBLISH"
	if Sharded(rdb) {
		publish = "SPUBLISH"
	}
	src := func(lua string) OnceScript {
		return NewOnceScript(strings.ReplaceAll(commonLua+lua, "$PUBLISH", publish))
	}
	return scripts{notify: src(notifyLua + notifyOneLua), notifyBatch: src(notifyLua + notifyBatchLua),
		broadcast: src(broadcastLua), abandon: redis.NewScript(abandonLua)}
}

// Sharded reports whether rdb is a Redis Cluster client, on which streams
// use sharded pub/sub (SPUBLISH and SSUBSCRIBE).
func Sharded(rdb redis.Cmdable) bool {
	_, ok := rdb.(*redis.ClusterClient)
	return ok
}
