// Package redact is how logs name users: by a short hash of the id unless
// an operator asks for ids in the clear. Every part logs users through it,
// so that one user can be followed through all of their logs.
package redact

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
)

// UserIDs says how user ids appear in logs. The zero value hashes them: a
// log line then names a user by the first 12 hex digits of the SHA-256 of
// the id ("u#3f2a…"), enough to follow one user through the logs of every
// part, without the id itself. Clear logs them as they are.
type UserIDs struct{ Clear bool }

// Attr is the log attribute "user" for user.
func (u UserIDs) Attr(user string) slog.Attr {
	if u.Clear {
		return slog.String("user", user)
	}
	return slog.String("user", HashUser(user))
}

// HashUser is how logs name user when ids are hashed.
func HashUser(user string) string {
	h := sha256.Sum256([]byte(user))
	return "u#" + hex.EncodeToString(h[:6])
}
