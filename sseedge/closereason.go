package sseedge

// CloseReason says why an SSE connection ended. The set is closed and
// documented (docs/metrics.md): every connection is counted exactly once in
// herald_sse_connections_closed_total under one of these.
type CloseReason string

const (
	// CloseClientClosed: the client went away (tab closed, network gone).
	CloseClientClosed CloseReason = "client_closed"
	// CloseServerDrain: the edge is shutting down and closed the stream,
	// after a jittered retry: field (Retry plus up to twice Retry).
	CloseServerDrain CloseReason = "server_drain"
	// CloseSlowConsumer: the client fell too far behind and its queue filled.
	CloseSlowConsumer CloseReason = "slow_consumer"
	// CloseWriteTimeout: a write did not finish within the write timeout.
	CloseWriteTimeout CloseReason = "write_timeout"
	// CloseWriteError: a write failed.
	CloseWriteError CloseReason = "write_error"
	// CloseTokenExpired: the client's token expired; it must reconnect with a
	// fresh one.
	CloseTokenExpired CloseReason = "token_expired"
	// CloseReplaced: the user opened more streams on this edge than
	// MaxConnsPerUser, and this, the oldest, made way for the newest. Its
	// last event is herald.replaced (ReplacedEvent), after a retry: field
	// of 10 × Retry, so that the client does not come straight back.
	CloseReplaced CloseReason = "replaced"
	// CloseBrokerLost: the edge's Redis Pub/Sub link stayed down longer than
	// BrokerGrace, or history could not be read, retried for BrokerGrace,
	// when it came back.
	CloseBrokerLost CloseReason = "broker_lost"
)

// closeReasons lists every reason, for metrics.
var closeReasons = []CloseReason{
	CloseClientClosed, CloseServerDrain, CloseSlowConsumer, CloseWriteTimeout,
	CloseWriteError, CloseTokenExpired, CloseReplaced, CloseBrokerLost,
}
