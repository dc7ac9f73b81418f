package fcmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"firebase.google.com/go/v4/messaging"
)

// Message is a message the emulator accepted for delivery.
type Message struct {
	// Name is the name the emulator answered with:
	// projects/{project}/messages/{id}.
	Name    string `json:"name"`
	Project string `json:"project"`
	// Exactly one of Token, Topic and Condition is set: the target.
	Token     string `json:"token,omitempty"`
	Topic     string `json:"topic,omitempty"`
	Condition string `json:"condition,omitempty"`
	// Data is the message's data payload.
	Data     map[string]string `json:"data,omitempty"`
	Received time.Time         `json:"received"`
	// Raw is the message object as the client sent it.
	Raw json.RawMessage `json:"message"`
}

// Decode parses the message as the firebase-admin-go client would, so a test
// can compare it with what it sent.
func (m Message) Decode() (*messaging.Message, error) {
	var msg messaging.Message
	if err := json.Unmarshal(m.Raw, &msg); err != nil {
		return nil, err
	}
	return &msg, nil
}

func (m Message) clone() Message {
	m.Data = maps.Clone(m.Data)
	m.Raw = slices.Clone(m.Raw)
	return m
}

// Attempt is one send request and how the emulator answered it.
type Attempt struct {
	Project string `json:"project"`
	// Token is the request's token, when the body named one.
	Token        string `json:"token,omitempty"`
	ValidateOnly bool   `json:"validate_only,omitempty"`
	// Received is when the request arrived, before any latency.
	Received time.Time `json:"received"`
	// Answered is when the emulator decided the answer, after the latency.
	Answered time.Time `json:"answered"`
	Status   int       `json:"status"`
	// Code is the error answered, empty when the request succeeded.
	Code ErrorCode `json:"code,omitempty"`
	// RetryAfter is the Retry-After header sent, zero for none.
	RetryAfter time.Duration `json:"-"`
	// Name is the message name answered on success.
	Name string `json:"name,omitempty"`
}

// MarshalJSON adds retry_after_seconds, the header's value.
func (a Attempt) MarshalJSON() ([]byte, error) {
	type plain Attempt
	return json.Marshal(struct {
		plain
		RetryAfter int `json:"retry_after_seconds,omitempty"`
	}{plain(a), retryAfterSeconds(a.RetryAfter)})
}

// Stats counts the send requests by outcome since the last Reset.
type Stats struct {
	// Requests is every send request answered.
	Requests int `json:"requests"`
	// Accepted is the messages recorded.
	Accepted int `json:"accepted"`
	// Validated is the validate_only requests that passed.
	Validated int `json:"validated"`
	// Errors counts the error answers by code.
	Errors map[ErrorCode]int `json:"errors"`
	// Throttled is when each 429 was answered, oldest first.
	Throttled []time.Time `json:"throttled"`
}

// capped keeps the newest max items of a sequence. It lets the slice grow to
// twice max before dropping, so that adding stays cheap.
type capped[T any] struct {
	max   int
	items []T
}

func (c *capped[T]) add(v T) {
	c.items = append(c.items, v)
	if len(c.items) >= 2*c.max {
		c.items = slices.Clone(c.items[len(c.items)-c.max:])
	}
}

// all returns the kept items, oldest first, in a slice of the caller's own.
func (c *capped[T]) all() []T { return slices.Clone(c.items[max(0, len(c.items)-c.max):]) }

func (c *capped[T]) reset() { c.items = nil }

// Messages returns the recorded messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	msgs := s.messages.all()
	s.mu.Unlock()
	for i := range msgs {
		msgs[i] = msgs[i].clone()
	}
	return msgs
}

// ByToken returns the recorded messages to token, oldest first.
func (s *Server) ByToken(token string) []Message {
	var out []Message
	for _, m := range s.Messages() {
		if m.Token == token {
			out = append(out, m)
		}
	}
	return out
}

// Count is how many messages were accepted since the last Reset. It goes on
// counting past Config.MaxRecords, where Messages stops growing.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.Accepted
}

// WaitFor waits until Count reaches n, or ctx is done.
func (s *Server) WaitFor(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		count, changed := s.stats.Accepted, s.changed
		s.mu.Unlock()
		if count >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("fcmtest: %d of %d messages: %w", count, n, ctx.Err())
		}
	}
}

// Attempts returns the send requests to token, or every send request when
// token is empty, oldest first. A test can check with them that a client
// waited out a Retry-After before it tried again.
func (s *Server) Attempts(token string) []Attempt {
	s.mu.Lock()
	all := s.attempts.all()
	s.mu.Unlock()
	if token == "" {
		return all
	}
	var out []Attempt
	for _, a := range all {
		if a.Token == token {
			out = append(out, a)
		}
	}
	return out
}

// Stats returns the counts of the send requests by outcome.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Errors = maps.Clone(s.stats.Errors)
	st.Throttled = s.throttled.all()
	return st
}

// Reset forgets the recorded messages, the attempts and the stats. The
// faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages.reset()
	s.attempts.reset()
	s.throttled.reset()
	s.stats = Stats{Errors: make(map[ErrorCode]int)}
	close(s.changed)
	s.changed = make(chan struct{})
}
