package delivery

import (
	"net/url"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/presence"
)

// hostile are user ids, idempotency keys, notification ids and caller
// names chosen to break out of a key's hash tag or to equal another key's
// suffix.
var hostile = []string{
	"alice", "alice}:idem:x", "x}:hist", "}", "{", "{u:bob}", "a}b{c", "%7D", "%", "%25",
	"alice}", "alice%7D", ":hist", ":idem:x", "x:hist", "bob}:trace:id", "tenant:alice", "",
}

// hashSlot is Redis Cluster's slot of key (KeySlot, checked against
// CLUSTER KEYSLOT by TestHashSlotMatchesRedis).
func hashSlot(key string) int { return int(KeySlot(key)) }

// hashTagOf is the text Redis Cluster hashes key on, or "" without a tag.
func hashTagOf(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return ""
	}
	return key[i+1 : i+1+j]
}

func TestHashSlotMatchesRedis(t *testing.T) {
	// Known values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for key, want := range map[string]int{"123456789": 12739, "foo": 12182, "{user1000}.following": 3443, "foo{}{bar}": 8363} {
		if got := hashSlot(key); got != want {
			t.Errorf("hashSlot(%q) = %d, want %d", key, got, want)
		}
	}
}

// TestKeysStayWithTheirUser: whatever the user id and whatever a caller
// puts in an idempotency key or a notification id, every key of a user is
// hashed on a tag that names that user and no other (so all of them are in
// the user's slot), and no two (user, kind, part) share a key.
func TestKeysStayWithTheirUser(t *testing.T) {
	const prefix = "herald:"
	reg, err := presence.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}), presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{} // key → what built it
	add := func(user, what, key string) {
		t.Helper()
		tag := hashTagOf(key)
		got, err := url.PathUnescape(strings.TrimPrefix(tag, "u:"))
		if !strings.HasPrefix(tag, "u:") || err != nil || got != user {
			t.Errorf("%s of user %q: key %q is hashed on %q, not on the user's tag", what, user, key, tag)
		}
		if hashSlot(key) != hashSlot(prefix+presence.HashTag(user)) {
			t.Errorf("%s of user %q: key %q is not in the user's slot", what, user, key)
		}
		if strings.Count(key, "}") != 1 || strings.Count(key, "{") != 1 {
			t.Errorf("%s of user %q: key %q holds a brace outside its tag", what, user, key)
		}
		id := "user " + user + ": " + what
		if prev, ok := owner[key]; ok && prev != id {
			t.Errorf("key %q is both %s and %s", key, prev, id)
		}
		owner[key] = id
	}
	for _, user := range hostile {
		if user == "" {
			continue
		}
		add(user, "presence", reg.Key(user))
		add(user, "channel", Channel(prefix, UserStream(user)))
		for _, k := range HistoryKeys(prefix, UserStream(user)) {
			add(user, "history "+k[strings.LastIndexByte(k, ':'):], k)
		}
		for i, k := range ReceiptKeys(prefix, user) {
			add(user, "receipts "+string(rune('0'+i)), k)
		}
		for i, k := range DeviceKeys(prefix, user) {
			add(user, "devices "+string(rune('0'+i)), k)
		}
		for _, part := range hostile {
			if part == "" {
				continue
			}
			add(user, "trace "+part, TraceKey(prefix, user, part))
			add(user, "fcm sent "+part, FCMSentKey(prefix, user, part))
			for _, caller := range hostile {
				add(user, "idempotency key "+part+" of caller "+caller, idempotencyKeyName(prefix, user, IdempotencyKey(caller, part)))
			}
		}
	}
}

// TestEscapeKeepsPlainIDs: ids without '%', '{' or '}' keep the names
// they had, so that an upgrade keeps existing keys.
func TestEscapeKeepsPlainIDs(t *testing.T) {
	for _, user := range []string{"alice", "tenant:alice", "a.b-c_d@example.com", "Ünïcode ユーザー"} {
		if got, want := presence.HashTag(user), "{u:"+user+"}"; got != want {
			t.Errorf("HashTag(%q) = %q, want %q", user, got, want)
		}
	}
	if got := TraceKey("h:", "alice", "01JABCDEF"); got != "h:{u:alice}:trace:01JABCDEF" {
		t.Errorf("TraceKey = %q", got)
	}
}

// TestUserNotifyNames checks that the names the publisher builds in one
// piece are the ones presence.Registry.Key, HistoryKeys and Channel give.
func TestUserNotifyNames(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}) // never dialled
	defer rdb.Close()
	for _, prefix := range []string{"herald:", "", "t-1:%:"} {
		reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		prefix = reg.Prefix()
		for _, user := range hostile {
			got := userNotifyNames(prefix, user)
			hist := HistoryKeys(prefix, UserStream(user))
			want := notifyNames{presence: reg.Key(user), log: hist[0], last: hist[1], channel: Channel(prefix, UserStream(user))}
			if got != want {
				t.Errorf("prefix %q, user %q: names %q, want %q", prefix, user, got, want)
			}
		}
	}
}
