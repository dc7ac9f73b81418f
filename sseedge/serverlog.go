package sseedge

import (
	"log"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serverLog is net/http's error log for the edge. Accept errors, which at
// an edge mean that the process is out of file descriptors (its open-file
// limit, which MaxConns should stay under), are counted and logged at Warn,
// at most once a second while they last; net/http retries them by itself.
// A panic in a handler is logged at Error. The rest is what clients and
// scanners do (TLS handshakes that fail, connections cut mid-request) and
// goes to Debug.
type serverLog struct {
	log     *slog.Logger
	accepts prometheus.Counter
	last    atomic.Int64 // unix ns of the last accept error logged
}

func newServerLog(l *slog.Logger, accepts prometheus.Counter) *log.Logger {
	return log.New(&serverLog{log: l, accepts: accepts}, "", 0)
}

func (l *serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(msg, "Accept error"):
		l.accepts.Inc()
		now, last := time.Now().UnixNano(), l.last.Load()
		if now-last >= int64(time.Second) && l.last.CompareAndSwap(last, now) {
			l.log.Warn("accepting connections failed; retrying (out of file descriptors? see the open-file limit and -max-conns)",
				slog.String("err", msg))
		}
	case strings.Contains(msg, "panic serving"):
		l.log.Error(msg)
	default:
		l.log.Debug(msg)
	}
	return len(p), nil
}
