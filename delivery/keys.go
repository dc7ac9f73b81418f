package delivery

import (
	"strconv"
	"strings"

	"github.com/herald-push/herald/presence"
)

// The names of Herald's Redis keys, one function per kind. Every key of a
// user starts with prefix + presence.HashTag(user), so that a user's keys
// share one Redis Cluster slot; what follows the tag is a fixed kind
// (":idem:", ":trace:", ...) and, for kinds with a variable part, that part
// escaped with presence.EscapeKeyPart, so that no key holds a brace outside
// its tag and no caller- or client-supplied string can change the slot or
// the kind of the key it ends up in. Routers, edges, the FCM worker and
// heraldctl all build names here (and in presence, in stream.go for a
// stream's history keys and channel, and in delivery/history for the epoch
// keys), so that they agree.
//
//	<prefix>{u:<user>}:presence              presence.Registry.Key
//	<prefix>{u:<user>}:log, :last            HistoryKeys (stream.go)
//	<prefix>{u:<user>}:events                Channel (stream.go), Pub/Sub
//	<prefix>{t:<topic>}:...                  the same, for a topic
//	<prefix>{u:<user>}:idem:<caller>:<key>   idempotencyKeyName
//	<prefix>{e:<n>}:epoch                    history epochs (delivery/history)
//	<prefix>{u:<user>}:receipts, :receipts:env  ReceiptKeys
//	<prefix>{r:<n>}:receipts:due             DueKey
//	<prefix>{u:<user>}:trace:<id>            TraceKey
//	<prefix>{u:<user>}:devices, :devices:platform  DeviceKeys
//	<prefix>{u:<user>}:fcm:sent:<id>         FCMSentKey
//	<prefix>{edges}, {edges}:info            presence.Registry.EdgesKey

// IdempotencyKey is the idempotency key a Publisher takes for key sent by
// caller: idempotency keys are scoped to the caller that sent them, so that
// one caller can neither suppress another's notification nor learn its id
// by reusing its key. caller is "" for the anonymous caller of a router
// without authentication. An empty key is no key.
func IdempotencyKey(caller, key string) string {
	if key == "" {
		return ""
	}
	// ':' and '%' are escaped in the caller's name, so that the first ':'
	// ends it: ("a", "b:c") and ("a:b", "c") stay apart.
	return callerEscaper.Replace(caller) + ":" + key
}

// callerEscaper escapes a caller's name in an idempotency key; a Replacer
// is safe for concurrent use, and building one costs more than using it.
var callerEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// idempotencyKeyName is the key that remembers user's idempotency key (as
// IdempotencyKey scopes it).
func idempotencyKeyName(prefix, user, key string) string {
	return prefix + presence.HashTag(user) + ":idem:" + presence.EscapeKeyPart(key)
}

// notifyNames are the names every notify script call of user takes: the
// presence key, the history keys and the channel, as presence.Registry.Key,
// HistoryKeys and Channel name them, built as one string that they are
// parts of (one allocation instead of nine).
type notifyNames struct{ presence, log, last, channel string }

// The suffixes after a user's hash tag of the names of notifyNames.
const (
	presenceSuffix = ":presence"
	logSuffix      = ":log"
	lastSuffix     = ":last"
	channelSuffix  = ":events"
)

func userNotifyNames(prefix, user string) notifyNames {
	tag := presence.HashTag(user)
	base := len(prefix) + len(tag)
	b := make([]byte, 0, 4*base+len(presenceSuffix)+len(logSuffix)+len(lastSuffix)+len(channelSuffix))
	for _, suffix := range [...]string{presenceSuffix, logSuffix, lastSuffix, channelSuffix} {
		b = append(append(append(b, prefix...), tag...), suffix...)
	}
	all := string(b)
	cut := func(suffix string) string {
		name := all[:base+len(suffix)]
		all = all[len(name):]
		return name
	}
	return notifyNames{presence: cut(presenceSuffix), log: cut(logSuffix), last: cut(lastSuffix), channel: cut(channelSuffix)}
}

// ReceiptKeys are user's receipt hashes.
func ReceiptKeys(prefix, user string) []string {
	base := prefix + presence.HashTag(user) + ":receipts"
	return []string{base, base + ":env"}
}

// DueKey is shard n of the receipts' deadline index.
func DueKey(prefix string, n int) string {
	return prefix + "{r:" + strconv.Itoa(n) + "}:receipts:due"
}

// TraceKey is the Redis hash that holds the trail of notification id for
// user: the router's decision, written by the notify script itself, then
// what the edges and the FCM worker did with it. It shares the user's hash
// tag, so that the script writes it in the same round trip.
//
// Fields: user, accepted_ms, route, subscribers, event_id, correlation_id,
// queued_ms, queue_error, fell_back_ms (router); sse_writes, sse_first_ms,
// acked_ms, late_ack_ms (edges);
// fcm_sent_ms, fcm_devices, fcm_retry_ms, fcm_attempts, fcm_code,
// fcm_dead_letter_ms, fcm_expired_ms, fcm_tokens_removed (worker).
func TraceKey(prefix, user, id string) string {
	return prefix + presence.HashTag(user) + ":trace:" + presence.EscapeKeyPart(id)
}

// DeviceKeys are user's device tokens (a sorted set) and their platforms (a
// hash). Tokens are members and fields, never part of a key name.
func DeviceKeys(prefix, user string) []string {
	base := prefix + presence.HashTag(user) + ":devices"
	return []string{base, base + ":platform"}
}

// FCMSentKey is the FCM worker's record that notification id was pushed to
// user, which keeps a redelivered Kafka record from being pushed twice.
func FCMSentKey(prefix, user, id string) string {
	return prefix + presence.HashTag(user) + ":fcm:sent:" + presence.EscapeKeyPart(id)
}
