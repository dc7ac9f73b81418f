package sseedge

import "time"

// ReplacedEvent is the SSE event name of the last event a stream gets when
// it is closed as replaced: its user opened more than MaxConnsPerUser
// streams on the edge, and the newest took this one's place. Its data is
// {"reason":"replaced"}. The stream's retry: field is raised to
// replacedRetryFactor × Retry first, so that a client that reconnects
// anyway (EventSource does) does not knock the newest off again at once;
// an application should rather close its EventSource, or reconnect only
// when the user comes back to it.
const ReplacedEvent = "herald.replaced"

// replacedRetryFactor multiplies Retry for a replaced stream's retry:
// field: 20s with the default Retry of 2s.
const replacedRetryFactor = 10

// replacedRetry is the reconnection delay a replaced client is given.
func (s *Server) replacedRetry() time.Duration {
	return replacedRetryFactor * s.cfg.Retry
}

// appendReplaced appends a replaced stream's last bytes: the longer retry:
// field, then the herald.replaced event. The event has no id: field, so
// the client's Last-Event-ID stays where it was.
func (s *Server) appendReplaced(b []byte) []byte {
	b = appendRetry(b, s.replacedRetry())
	return appendBody(b, ReplacedEvent, `{"reason":"replaced"}`)
}

// closeReplaced ends a replaced stream on the handler goroutine.
func (s *Server) closeReplaced(write func([]byte) CloseReason) {
	_ = write(s.appendReplaced(nil))
}
