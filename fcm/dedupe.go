package fcm

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// sentKey is the dedupe set of env's pushes, in the user's slot.
func (w *Worker) sentKey(env *heraldv1.Envelope) string {
	return delivery.FCMSentKey(w.cfg.RedisPrefix, env.GetUserId(), env.GetId())
}

// tokenHash keeps whole tokens out of the dedupe sets.
func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:8])
}
