package sseedge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/delivery/receipts"
)

// maxAckIDs bounds one acknowledgement: a client acks what it received since
// its last ack, a second or so of events.
const maxAckIDs = 256

// ackRequest is the body of POST /v1/ack: the SSE ids (the id: fields, as
// EventSource's lastEventId shows them) of the events the client has
// handled.
type ackRequest struct {
	IDs []string `json:"ids"`
}

// ackResponse says what the acknowledgement did.
type ackResponse struct {
	Acked   int `json:"acked"`
	Late    int `json:"late"`
	Unknown int `json:"unknown"`
}

// handleAck serves POST /v1/ack: a client acknowledges notifications sent
// with DELIVERY_MODE_ACK_OR_PUSH, so that they are not pushed. The token is
// the stream's, in the Authorization header or ?access_token= (for
// navigator.sendBeacon, which cannot set headers); it can only acknowledge
// its own user's notifications, because an SSE id only names positions in
// that user's stream.
func (s *Server) handleAck(w http.ResponseWriter, r *http.Request) {
	if !s.cors(w, r) {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST, OPTIONS")
		s.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	// Acks in flight from one client address are at most MaxConnsPerIP,
	// counted apart from its streams (an address holding its streams must
	// still ack them), until each is answered; RequestTimeout bounds how
	// long that is.
	if p, ok := s.clientPrefix(r); ok && s.cfg.MaxConnsPerIP > 0 {
		if !s.acquireIn(s.acksIP, p) {
			w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
			s.refuse(w, http.StatusTooManyRequests, "too_many_connections",
				fmt.Sprintf("this client address holds its limit of %d acks in flight on this edge", s.cfg.MaxConnsPerIP))
			return
		}
		defer s.releaseIn(s.acksIP, p)
	}
	claims, err := s.auth.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	}
	// Any content type: sendBeacon sends text/plain.
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_body", "could not read the body")
		return
	}
	if len(body) > 64<<10 {
		s.refuse(w, http.StatusRequestEntityTooLarge, "too_large", "the body is over 64 KiB")
		return
	}
	var req ackRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_body", `the body must be JSON: {"ids": ["<SSE id>", ...]}`)
		return
	}
	if len(req.IDs) == 0 || len(req.IDs) > maxAckIDs {
		s.refuse(w, http.StatusBadRequest, "bad_ids", fmt.Sprintf("give 1 to %d ids", maxAckIDs))
		return
	}
	var eids []uint64
	for _, id := range req.IDs {
		pos, ok := parseCursor(id)[""]
		if !ok {
			s.refuse(w, http.StatusBadRequest, "bad_ids", fmt.Sprintf("%q is not an SSE id of this service", id))
			return
		}
		eids = append(eids, pos)
	}
	res, err := s.receipts.Ack(r.Context(), claims.Subject, eids, s.now())
	if err != nil {
		s.log.Warn("ack failed", slog.Any("err", err))
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "broker_unavailable", "the edge could not reach Redis; retry")
		return
	}
	s.countAcks(res, claims.Subject)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ackResponse{Acked: res.Acked, Late: res.Late, Unknown: res.Unknown})
}

// ackOnReconnect acknowledges, for a stream resuming at cursor, everything
// up to the cursor's position in the user's stream: the client had it. The
// acknowledgement outlives ctx, the request's: a client that hangs up at
// once still had what it resumed past.
func (s *Server) ackOnReconnect(ctx context.Context, st *stream, cursor map[string]uint64) {
	pos, ok := cursor[""]
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	res, err := s.receipts.AckUpTo(ctx, st.user, pos, s.now())
	if err != nil {
		s.log.Warn("ack on reconnect failed", slog.Any("err", err))
		return
	}
	s.countAcks(res, st.user)
}

// countAcks counts and traces an acknowledgement's outcome.
func (s *Server) countAcks(res receipts.AckResult, user string) {
	s.metrics.acks.WithLabelValues("acked").Add(float64(res.Acked))
	s.metrics.acks.WithLabelValues("late").Add(float64(res.Late))
	s.metrics.acks.WithLabelValues("unknown").Add(float64(res.Unknown))
	for _, d := range res.Latencies {
		s.metrics.ackLatency.Observe(d.Seconds())
	}
	if s.trail != nil {
		now := s.now()
		for _, id := range res.IDs {
			s.trail.mark(user, id, "acked_ms", now)
		}
		for _, id := range res.LateIDs {
			s.trail.mark(user, id, "late_ack_ms", now)
		}
	}
}

// ackMetrics are the acknowledgement metrics.
func ackMetrics() (*prometheus.CounterVec, prometheus.Histogram) {
	acks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "acks_total",
		Help: "Acknowledged notification receipts (POST /v1/ack, or a reconnect's Last-Event-ID), by result: acked (in time: no push), late (after the fallback push), unknown (no receipt).",
	}, []string{"result"})
	for _, r := range []string{"acked", "late", "unknown"} {
		acks.WithLabelValues(r)
	}
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "herald", Subsystem: "sse", Name: "ack_latency_seconds",
		Help:    "From the router accepting an ack-or-push notification to the client acknowledging it in time.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	return acks, latency
}
