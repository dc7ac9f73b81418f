package presence

import "strings"

// Every Redis key and Pub/Sub channel of a user is
//
//	<prefix>{u:<EscapeKeyPart(user)>}:<kind>[:<EscapeKeyPart(part)>...]
//
// The escape makes the hash tag close where it is meant to, whatever the
// user id: Redis Cluster hashes the text between the first '{' and the first
// '}' after it, so an unescaped '}' in a user id would end the tag early,
// and put the key in another user's slot, or make it another user's key
// ("alice}:idem:x" + ":hist"). It is injective, so that two users never
// share a key, and it leaves a string without '%', '{' or '}' as it is, so
// that the keys of such users (nearly all) are those of earlier versions.
// Anything a caller or client sends that ends up after the tag (an
// idempotency key, a notification id) is escaped the same way, so that no
// key holds a brace outside its tag.

// keyEscaper percent-encodes the escape character and the braces.
var keyEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

// EscapeKeyPart returns s with '%', '{' and '}' percent-encoded: the form
// in which any string goes into a key name.
func EscapeKeyPart(s string) string {
	if !strings.ContainsAny(s, "%{}") {
		return s
	}
	return keyEscaper.Replace(s)
}

// HashTag is the Redis Cluster hash tag shared by every key and channel that
// belongs to user, so that one script can touch all of them in one slot.
// Distinct users have distinct tags, and the tag always ends at its own
// closing brace: see EscapeKeyPart.
func HashTag(user string) string { return "{u:" + EscapeKeyPart(user) + "}" }
