package delivery

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// MaxUserIDBytes bounds a user id: it appears in Redis keys, channels and
// presence entries.
const MaxUserIDBytes = 256

// CheckText validates a short identifier-like value (a user id, an event
// name, an idempotency key): at most maxBytes, valid UTF-8, and no control
// characters, which would end an SSE field or a log line. Empty is fine.
func CheckText(v string, maxBytes int) error {
	switch {
	case len(v) > maxBytes:
		return fmt.Errorf("is %d bytes, over the limit of %d", len(v), maxBytes)
	case !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("must be valid UTF-8 without control characters")
	}
	return nil
}

// CheckUserID validates a user id: the router applies it to Notify, the
// edge to a token's subject.
func CheckUserID(u string) error {
	if u == "" {
		return errors.New("must not be empty")
	}
	return CheckText(u, MaxUserIDBytes)
}

// topicName is what a topic may be called: it keeps cursors, Redis keys and
// log lines unambiguous.
var topicName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ValidTopic reports whether name may name a broadcast topic: 1 to 128
// characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit.
func ValidTopic(name string) bool { return topicName.MatchString(name) }

// TopicAllowed reports whether topic matches one of the patterns that grant
// access to topics: a caller's topics on the router, a token's on the edge.
// A pattern is an exact topic name ("orders.eu"), a prefix ending in ".*"
// that matches every topic starting with the prefix and its dot
// ("orders.*" matches "orders.eu" and "orders.eu.paid", not "orders"), or
// "*", which matches every topic. No pattern matches nothing.
func TopicAllowed(topic string, patterns []string) bool {
	for _, p := range patterns {
		if p == "*" || p == topic || (strings.HasSuffix(p, ".*") && strings.HasPrefix(topic, p[:len(p)-1])) {
			return true
		}
	}
	return false
}
