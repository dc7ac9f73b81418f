package sseedge

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herald-push/herald/delivery"
)

// writeError answers a refused request with a status and a JSON body
// {"error": code, "message": text}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.metrics.refused.WithLabelValues(code).Inc()
	writeError(w, status, code, msg)
}

// handleEvents serves GET /v1/events. An HTTP/2 stream's goroutine waits
// in this frame and hold's for the stream's life: the work of opening it
// is in openEvents, whose frame is gone by then.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	st := s.openEvents(w, r)
	if st == nil {
		return
	}
	ctx := r.Context()
	reason, adopted := s.serveStream(ctx, w, r, st)
	if adopted {
		// The writers serve the stream from here, and finish it.
		return
	}
	if reason == "" {
		reason = s.hold(ctx, w, st)
	}
	s.endHeld(ctx, w, st, reason)
}

// endHeld ends a stream its handler served, for reason. It has a frame of
// its own, so that handleEvents' frame, which an HTTP/2 stream's goroutine
// keeps for the stream's life, stays small: with this in it, an idle
// HTTP/2 stream cost about 4 KiB more, a goroutine stack's doubling
// (heraldbench -scenario idle -idle-h2 100: 20.3 against 16.2 KiB).
//
//go:noinline
func (s *Server) endHeld(ctx context.Context, w http.ResponseWriter, st *stream, reason CloseReason) {
	// The first reason wins: a stream closed as slow_consumer whose blocked
	// write then times out is counted as slow_consumer, once.
	st.close(reason)
	counted := s.count(st)
	// Counted before the client can see the end, as the writers do
	// (writers.end): a drained or replaced stream's last words come after.
	switch reason {
	case CloseServerDrain:
		s.closeDrained(s.writeFunc(ctx, w, st, nil))
	case CloseReplaced:
		s.closeReplaced(s.writeFunc(ctx, w, st, nil))
	}
	s.conns.endStream(connOf(ctx))
	s.finish(ctx, st, counted)
}

// openEvents admits and opens the stream a request for /v1/events asks
// for, or answers the request with why not and returns nil.
func (s *Server) openEvents(w http.ResponseWriter, r *http.Request) *stream {
	if !s.cors(w, r) {
		return nil
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, OPTIONS")
		s.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return nil
	}
	if s.draining.Load() {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "draining", "this edge is shutting down; reconnect to another")
		return nil
	}
	// This request holds a place from here until its stream is in the hub
	// (and counted there) or it gave up. It takes its place before reading
	// the hub's count, and a stream gives its place back only once it is in
	// the hub: so of two concurrent requests, at least one counts the other.
	// A stream in the hub whose request has not given its place back yet
	// counts twice, which can refuse one too many at the limit, never admit
	// one too many.
	opening := true
	admitted := func() {
		if opening {
			opening = false
			s.opening.Add(-1)
		}
	}
	defer admitted()
	ahead := s.opening.Add(1) // before the count: see above
	if s.hub.count()+int(ahead) > s.cfg.MaxConns {
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "edge_full", fmt.Sprintf("this edge holds its limit of %d streams; retry", s.cfg.MaxConns))
		return nil
	}
	// client is counted against MaxConnsPerIP until the request ends, or
	// its stream does.
	var client netip.Prefix
	if p, ok := s.clientPrefix(r); ok && s.cfg.MaxConnsPerIP > 0 {
		if !s.acquireIP(p) {
			w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
			s.refuse(w, http.StatusTooManyRequests, "too_many_connections",
				fmt.Sprintf("this client address holds its limit of %d streams on this edge", s.cfg.MaxConnsPerIP))
			return nil
		}
		client = p
		defer func() {
			if client.IsValid() {
				s.releaseIP(client)
			}
		}()
	}
	// r.URL.Query drops the pairs it cannot parse (one with a ';', say):
	// a stream would open without the topics the client asked for.
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_query", "the query string is malformed: "+err.Error())
		return nil
	}
	claims, err := s.auth.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return nil
	}
	topics := query["topic"]
	if status, code, msg := s.checkTopics(topics, claims.topics(s.cfg.TopicsClaim)); status != 0 {
		s.refuse(w, status, code, msg)
		return nil
	}
	// Admitted: the stream's own bounds (its write deadlines, heartbeats,
	// MaxConnsPerIP) hold it from here, not RequestTimeout. On HTTP/1.x,
	// net/http reads the connection in the background to see the client
	// hang up, and that read's timing out would cancel the stream; on
	// HTTP/2, a write deadline resets the stream when it passes, even with
	// no write waiting.
	setRequestDeadlines(w, time.Time{}, time.Time{})
	// Its connection is no longer evicted for a new one (connLimits) from
	// here until the stream ends or is taken over; one evicted meanwhile
	// is closed.
	conn := connOf(r.Context())
	if !s.conns.admitStream(conn) {
		return nil
	}
	holding := true
	defer func() {
		if holding {
			s.conns.endStream(conn)
		}
	}()
	lastID := r.Header.Get("Last-Event-ID")
	if lastID == "" {
		lastID = query.Get("last_event_id")
	}

	ctx := r.Context()
	st := newStream(claims.Subject, s.cfg.EdgeID, s.now(), s.cfg.QueueSize, s.presence.Prefix(), topics)
	st.expires = expiry(claims.ExpiresAt.Time)
	cursor := s.checkCursor(lastID, parseCursor(lastID))
	// A client that resumes past a notification had it: no push for it.
	s.ackOnReconnect(ctx, st, cursor)
	err = s.open(ctx, st, cursor)
	admitted()
	if err != nil {
		s.log.Warn("stream setup failed", slog.Any("err", err))
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.Retry.Seconds())+1))
		s.refuse(w, http.StatusServiceUnavailable, "broker_unavailable", "the edge could not reach Redis; retry")
		return nil
	}

	s.metrics.open.Inc()
	// The stream holds the client's place from here: finish gives it back.
	st.client, client = client, netip.Prefix{}
	holding = false // until endHeld, or the writers' taking it over
	return st
}

// count counts a stream that ended, before its connection is closed, so
// that a client that sees the close also finds it in the metrics.
func (s *Server) count(st *stream) CloseReason {
	reason := st.closed()
	s.metrics.open.Dec()
	s.metrics.closed.WithLabelValues(string(reason)).Inc()
	s.metrics.duration.Observe(s.now().Sub(st.conn.Since).Seconds())
	return reason
}

// finish cleans up after a stream that ended and was counted: it leaves the
// hub, and removes the stream's lease and its place in MaxConnsPerIP.
func (s *Server) finish(ctx context.Context, st *stream, reason CloseReason) {
	cleanupCtx := context.WithoutCancel(ctx)
	s.hub.leave(cleanupCtx, st)
	rmCtx, cancel := context.WithTimeout(cleanupCtx, 2*time.Second)
	defer cancel()
	if err := s.remover.remove(rmCtx, st.conn); err != nil {
		// The lease expires by itself within its TTL.
		s.metrics.presenceErrors.Inc()
		s.log.Warn("presence remove failed", slog.Any("err", err))
	}
	if st.client.IsValid() {
		s.releaseIP(st.client)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "stream closed",
			slog.String("conn", st.conn.ID), slog.String("reason", string(reason)))
	}
}

// open sets a new stream up: it fixes the position of each stream the client
// has none for, subscribes, enforces the per-user limit, leases presence and
// reads what the client missed. Positions are fixed before subscribing, so
// that an event published in between is found in history.
func (s *Server) open(ctx context.Context, st *stream, cursor map[string]uint64) error {
	after := make([]*uint64, len(st.names))
	var fresh []int
	for i, name := range st.names {
		if pos, ok := cursor[name]; ok {
			after[i] = &pos
		} else {
			fresh = append(fresh, i)
		}
	}
	if len(fresh) > 0 {
		streams := make([]delivery.Stream, len(fresh))
		for j, i := range fresh {
			streams[j] = st.streams[i]
		}
		res, err := s.history.Since(ctx, streams, make([]*uint64, len(fresh)))
		if err != nil {
			return err
		}
		for j, i := range fresh {
			after[i] = &res[j].Position
		}
	}
	// Deliveries charge the budget from the moment the stream joins.
	st.budget = s.budget
	joinCtx, cancel := context.WithTimeout(ctx, s.cfg.SubscribeTimeout)
	err := s.hub.join(joinCtx, st)
	cancel()
	if err != nil {
		return err
	}
	s.enforceUserLimit(st)
	if err := s.presence.Lease(ctx, st.conn); err != nil {
		s.hub.leave(context.WithoutCancel(ctx), st)
		s.metrics.presenceErrors.Inc()
		return err
	}
	// The first page of what the client missed; the stream's writer reads
	// the rest, a page at a time (replay.go).
	for i, p := range after {
		st.pos[i] = *p
	}
	st.replay = newReplay(st.pos)
	if err := s.fill(ctx, st); err != nil {
		s.dropReplay(st)
		s.hub.leave(context.WithoutCancel(ctx), st)
		return err
	}
	return nil
}

// enforceUserLimit closes the user's oldest local streams beyond the limit
// with reason replaced.
func (s *Server) enforceUserLimit(st *stream) {
	mine := s.hub.readers(st.channels[0])
	if len(mine) <= s.cfg.MaxConnsPerUser {
		return
	}
	slices.SortFunc(mine, func(a, b *stream) int { return a.conn.Since.Compare(b.conn.Since) })
	for _, old := range mine[:len(mine)-s.cfg.MaxConnsPerUser] {
		if old != st {
			old.close(CloseReplaced)
		}
	}
}

// clientPrefix returns the address r counts against for MaxConnsPerIP: the
// peer's or, from a trusted proxy, the rightmost untrusted address in
// X-Forwarded-For (what the client sent itself is further left, and cannot
// be trusted). An IPv6 address counts as its /64. It reports false for a peer
// with no IP address.
func (s *Server) clientPrefix(r *http.Request) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{}, false
	}
	addr := ap.Addr().Unmap()
	if s.trustedProxy(addr) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for _, h := range slices.Backward(hops) {
			hop, err := parseHop(strings.TrimSpace(h))
			if err != nil {
				// Not written by a trusted proxy: the last good hop is the
				// client.
				break
			}
			addr = hop.Unmap()
			if !s.trustedProxy(addr) {
				break
			}
		}
	}
	return addrPrefix(addr)
}

// addrPrefix returns the prefix addr counts as in the per-address limits:
// itself, or its /64 for IPv6, what one host usually gets.
func addrPrefix(addr netip.Addr) (netip.Prefix, bool) {
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, err := addr.WithZone("").Prefix(bits)
	return p, err == nil
}

// parseHop reads an X-Forwarded-For entry: an address, or an address and
// port as some load balancers write it.
func parseHop(h string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(h); err == nil {
		return a, nil
	}
	ap, err := netip.ParseAddrPort(h)
	return ap.Addr(), err
}

func (s *Server) trustedProxy(addr netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// acquireIP counts one more stream for client, unless it holds its limit.
func (s *Server) acquireIP(client netip.Prefix) bool { return s.acquireIn(s.perIP, client) }

func (s *Server) releaseIP(client netip.Prefix) { s.releaseIn(s.perIP, client) }

// acquireIn counts one more for client in counts (perIP or acksIP),
// unless it holds MaxConnsPerIP there.
func (s *Server) acquireIn(counts map[netip.Prefix]int, client netip.Prefix) bool {
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	if counts[client] >= s.cfg.MaxConnsPerIP {
		return false
	}
	counts[client]++
	return true
}

func (s *Server) releaseIn(counts map[netip.Prefix]int, client netip.Prefix) {
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	if counts[client]--; counts[client] <= 0 {
		delete(counts, client)
	}
}

// checkTopics validates the requested topics against the limits and the
// client's allowed patterns. It returns a zero status when they are fine.
func (s *Server) checkTopics(topics, allowed []string) (status int, code, msg string) {
	if len(topics) > s.cfg.MaxTopics {
		return http.StatusBadRequest, "too_many_topics", fmt.Sprintf("at most %d topics per stream", s.cfg.MaxTopics)
	}
	seen := make(map[string]bool, len(topics))
	for _, t := range topics {
		if !delivery.ValidTopic(t) {
			return http.StatusBadRequest, "bad_topic", fmt.Sprintf("topic %q is not a valid topic name", t)
		}
		if seen[t] {
			return http.StatusBadRequest, "bad_topic", fmt.Sprintf("topic %q is repeated", t)
		}
		seen[t] = true
		if !delivery.TopicAllowed(t, allowed) {
			return http.StatusForbidden, "forbidden_topic", fmt.Sprintf("the token does not allow topic %q", t)
		}
	}
	return 0, "", ""
}
