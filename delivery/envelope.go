// Package delivery is what every part of Herald shares to carry a
// notification: the protobuf envelope and its ids, streams and their
// channels, the names of every Redis key (keys.go) and their cluster slots,
// input validation, and the publisher that looks up presence, records
// history and publishes in one Redis round trip (its Lua scripts in .lua
// files beside it). The parts with one job each are beneath it:
// delivery/history reads the histories, delivery/receipts keeps ack-or-push
// receipts and sweeps them, delivery/devices holds FCM tokens,
// delivery/queue is the Kafka side of the offline path, delivery/trail the
// per-notification trail, and delivery/redact how logs name users.
package delivery

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// crockford is the Crockford base32 alphabet: no I, L, O or U, so ids are
// easy to read aloud and never spell words.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns a new notification id: 26 characters of Crockford base32 that
// encode 48 bits of milliseconds since the epoch and 80 random bits. Ids sort
// by the time they were made, and are safe in an SSE id field, a Redis key and
// a log line.
func NewID(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic(fmt.Sprintf("delivery: crypto/rand failed: %v", err))
	}
	// 128 bits as 26 base32 digits, most significant first (the top digit
	// carries 3 bits).
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// Marshal encodes an envelope for the wire.
func Marshal(env *heraldv1.Envelope) ([]byte, error) {
	b, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("delivery: marshal envelope: %w", err)
	}
	return b, nil
}

// Unmarshal decodes an envelope from the wire.
func Unmarshal(b []byte) (*heraldv1.Envelope, error) {
	env := new(heraldv1.Envelope)
	if err := proto.Unmarshal(b, env); err != nil {
		return nil, fmt.Errorf("delivery: unmarshal envelope: %w", err)
	}
	return env, nil
}

// ErrBadEventID is returned for an event id that is not a decimal number.
var ErrBadEventID = errors.New("delivery: malformed event id")

// ParseEventID parses an event id: a position in a stream's history.
func ParseEventID(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadEventID, s)
	}
	return n, nil
}
