// Package sseedge is Herald's SSE edge: it holds clients' Server-Sent Events
// connections, keeps their presence in Redis, and writes each notification
// published for a user to every one of that user's connections.
package sseedge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/presence"
)

// Server is an SSE edge.
type Server struct {
	cfg      Config
	rdb      redis.UniversalClient
	presence *presence.Registry
	trail    *trail // nil with NoTrail
	receipts *receipts.Receipts
	remover  *remover
	log      *slog.Logger
	now      func() time.Time
	auth     *authenticator
	metrics  *metrics
	history  *history.Reader
	pages    http.Handler
	budget   *budget      // of the bytes held for all streams
	tracer   trace.Tracer // nil: tracing off

	hubMu sync.Mutex
	hub   *hub // set by Serve
	// writers serve the HTTP/1.1 streams taken over from net/http; set by
	// Serve, nil where streams stay on their handler goroutines.
	writers *writers
	// held holds the streams served on their handler goroutines; set by
	// Serve. turnBufs pools their turns' buffers (*turnBuffers).
	held     *held
	turnBufs sync.Pool
	draining atomic.Bool
	handlers sync.WaitGroup
	// opening counts the requests that passed the MaxConns check and whose
	// stream has not joined the hub yet, so that concurrent opens cannot all
	// pass it on the same count.
	opening atomic.Int64

	ipMu  sync.Mutex
	perIP map[netip.Prefix]int // streams and requests in flight by client address
	// acksIP are the acks in flight by client address: a limit of their
	// own, so that an address holding its streams can still ack.
	acksIP map[netip.Prefix]int
	// conns counts the TCP connections, by peer address and in total.
	conns *connLimits

	// snapshots pools deliver's lists of a channel's streams (*[]*stream).
	snapshots sync.Pool
}

func (s *Server) currentHub() *hub {
	s.hubMu.Lock()
	defer s.hubMu.Unlock()
	return s.hub
}

// EdgeID is the edge's id in presence entries.
func (s *Server) EdgeID() string { return s.cfg.EdgeID }

// handler returns the edge's HTTP routes: GET /v1/events, the event stream,
// POST /v1/ack, the browser client (/v1/herald.js and /v1/herald.d.ts), and
// the pages, if any.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/events", s.handleEvents)
	mux.HandleFunc("/v1/ack", s.handleAck)
	mux.Handle("/v1/herald.js", s.handleClientFile(newClientFile("herald.js", "text/javascript; charset=utf-8", clientJS)))
	mux.Handle("/v1/herald.d.ts", s.handleClientFile(newClientFile("herald.d.ts", "application/typescript; charset=utf-8", clientDTS)))
	if s.pages != nil {
		mux.Handle("/", s.pages)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.limitRequest(w)
		// An HTTP/2 stream's goroutine waits below this frame for the
		// stream's life (see hold): the refusal has a frame of its own.
		if len(r.RequestURI) > maxRequestURI {
			s.refuseLongURI(w)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// limitRequest bounds what is left of any request: its body must come
// within RequestTimeout, and its answer be written within as long again,
// time to refuse a body that stalled; a stream's request clears both once
// admitted (see openEvents). Without this, net/http waits for an unread
// body (up to 256 KiB) before answering, with no deadline. It has a frame
// of its own, gone before the request is served, so that the handler's
// frame, which an HTTP/2 stream's goroutine keeps for the stream's life,
// stays small (see hold).
//
//go:noinline
func (s *Server) limitRequest(w http.ResponseWriter) {
	now := time.Now()
	setRequestDeadlines(w, now.Add(s.cfg.RequestTimeout), now.Add(2*s.cfg.RequestTimeout))
}

// setRequestDeadlines sets w's read and write deadlines; zero times clear
// them. On HTTP/1.x they are the connection's, which net/http sets again
// for the next request; on HTTP/2 they are the stream's: a read deadline
// ends the body's reads, a write deadline resets the stream.
func setRequestDeadlines(w http.ResponseWriter, read, write time.Time) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(read)
	_ = rc.SetWriteDeadline(write)
}

func (s *Server) refuseLongURI(w http.ResponseWriter) {
	s.refuse(w, http.StatusRequestURITooLong, "uri_too_long", fmt.Sprintf("the URL is over %d bytes", maxRequestURI))
}

// maxRequestURI bounds a request's URL, as common proxies do: a token, 16
// topics and a cursor fit in it. Longer request lines, or headers over
// maxHeaderBytes, get 431 from the HTTP server itself.
const maxRequestURI = 8 << 10

// maxHeaderBytes bounds a request's line and headers: room for a token, a
// cursor and the usual cookies.
const maxHeaderBytes = 16 << 10

// idleTimeout closes keep-alive connections that carry no request, and
// HTTP/2 connections with no stream open (see idleConns).
const idleTimeout = 2 * time.Minute

// Serve serves the edge on lis until ctx is done, then drains: it refuses new
// streams and closes the open ones spread over DrainPeriod with reason
// server_drain. It speaks HTTP/1.1 and, without TLS, HTTP/2 (h2c), so that a
// browser is not held to six streams per origin. On Linux, with a TCP
// listener, an HTTP/1.1 stream is taken over from net/http once open, so
// that an idle one costs no goroutine (see writers).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if err := s.auth.loadKeys(ctx); err != nil {
		return err
	}
	h := newHub(ctx, s.rdb, s.log, s.cfg.BrokerGrace, s.cfg.SubscribeTimeout, s.deliver, s.brokerLost)
	hubCtx, stopHub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHub()
	s.hubMu.Lock()
	if s.hub != nil {
		s.hubMu.Unlock()
		_ = h.ps.Close()
		return errors.New("sseedge: Serve called twice")
	}
	s.hub = h
	// Connections from a TCP listener are taken over; TLS connections, or
	// those of another listener, cannot be written to directly.
	if _, ok := lis.(*net.TCPListener); ok {
		if p, err := newPoller(s.log); err == nil {
			s.writers = newWriters(hubCtx, s, p)
		} else {
			s.log.Info("streams are served one goroutine each", slog.Any("err", err))
		}
	}
	s.held = newHeld(s)
	s.hubMu.Unlock()

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Not IdleTimeout: see idleConns.
		ConnState: connStates(s.conns.connState, newIdleConns(idleTimeout).connState),
		// Requests know their connection, whose streams it counts.
		ConnContext: withConn,
		Protocols:   protocols,
		ErrorLog:    newServerLog(s.log, s.metrics.acceptErrors),
	}
	var hubDone sync.WaitGroup
	hubDone.Go(func() { _ = h.run(hubCtx) })
	if s.writers != nil {
		// The writers stop after the drain, which ends their streams.
		hubDone.Go(s.writers.run)
	}
	hubDone.Go(func() { s.auth.refreshKeys(hubCtx) })
	// The held set's ticker stops after the drain, like the writers'.
	hubDone.Go(func() { s.held.run(hubCtx) })

	g, gctx := errgroup.WithContext(ctx)
	// The edge's record outlives serving, like the hub: it shows the drain.
	hubDone.Go(func() { s.announce(gctx, hubCtx, h, lis.Addr()) })
	g.Go(func() error {
		if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("sseedge: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error { s.renewLoop(gctx, h); return nil })
	if s.trail != nil {
		hubDone.Go(func() { s.trail.run(hubCtx) })
	}
	hubDone.Go(func() { s.remover.run(hubCtx) })
	hubDone.Go(func() { s.enforceBudget(hubCtx) })
	g.Go(func() error {
		<-gctx.Done()
		s.drain(context.WithoutCancel(gctx), hs)
		return nil
	})
	err := g.Wait()
	stopHub()
	// Closing the Pub/Sub connection ends a receive blocked on the network.
	_ = h.ps.Close()
	hubDone.Wait()
	return err
}

// connStates returns a ConnState hook that calls each of hooks in turn.
func connStates(hooks ...func(net.Conn, http.ConnState)) func(net.Conn, http.ConnState) {
	return func(c net.Conn, state http.ConnState) {
		for _, h := range hooks {
			h(c, state)
		}
	}
}

// brokerLost closes every stream when the Pub/Sub link has been down for
// longer than BrokerGrace: the clients reconnect, possibly to another edge,
// and recover from history.
func (s *Server) brokerLost() {
	streams := s.hub.all()
	s.log.Error("redis pub/sub down beyond the grace period; closing streams",
		slog.Duration("grace", s.cfg.BrokerGrace), slog.Int("streams", len(streams)))
	for _, st := range streams {
		st.close(CloseBrokerLost)
	}
}

// decode turns a published or recorded envelope into an event ready to
// write, or nil (counted) when it is malformed or expired.
func (s *Server) decode(channel string, payload []byte) *outEvent {
	env, err := delivery.Unmarshal(payload)
	var eid uint64
	if err == nil {
		eid, err = delivery.ParseEventID(env.GetEventId())
	}
	if err != nil {
		s.metrics.dropped.WithLabelValues("malformed").Inc()
		s.log.Warn("dropping malformed envelope", slog.Any("err", err))
		return nil
	}
	if exp := env.GetExpiresAt(); exp != nil && exp.AsTime().Before(s.now()) {
		s.metrics.dropped.WithLabelValues("expired").Inc()
		return nil
	}
	data := env.GetData()
	ev := &outEvent{
		channel:     channel,
		eventID:     eid,
		body:        appendBody(make([]byte, 0, bodySize(env.GetEvent(), data)), env.GetEvent(), bytesAsString(data)),
		accepted:    env.GetAcceptedAt().AsTime(),
		id:          env.GetId(),
		correlation: env.GetCorrelationId(),
		traced:      env.GetTraced(),
	}
	if env.GetTopic() == "" {
		ev.user = env.GetUserId()
	}
	ev.trace = s.newEventTrace(env, s.now())
	return ev
}

// deliver hands one published envelope to every local stream that reads the
// channel. It never blocks: a stream whose queue is full is closed as
// slow_consumer, and recovers from history when it reconnects.
func (s *Server) deliver(channel string, payload []byte) {
	ev := s.decode(channel, payload)
	if ev == nil {
		return
	}
	snap, _ := s.snapshots.Get().(*[]*stream)
	if snap == nil {
		snap = new([]*stream)
	}
	defer func() {
		clear(*snap)
		*snap = (*snap)[:0]
		s.snapshots.Put(snap)
	}()
	var readers []*stream
	// The hub's own copy of the channel name: the streams hold the same
	// one, so that matching an event to a stream (appendLive) compares
	// pointers, not bytes.
	readers, ev.channel = s.hub.appendReaders((*snap)[:0], channel)
	*snap = readers
	if len(readers) == 1 {
		// A user's one stream: written here, on the Pub/Sub reader's
		// goroutine, rather than handed to a writer, which would be woken
		// for it (see writers.pumpHere).
		st := readers[0]
		ok, held := st.offerHeld(ev)
		switch {
		case !ok:
			st.close(CloseSlowConsumer)
		case held:
			st.out.writers.pumpHere(st)
		}
		return
	}
	for _, st := range readers {
		if !st.offer(ev) {
			st.close(CloseSlowConsumer)
		}
	}
}

// ResetEvent is the SSE event name that tells a client it may have missed
// events that are no longer in history: it should re-fetch its full state.
const ResetEvent = "herald.reset"

// Ready reports whether the edge should receive new clients: it is not
// draining, and Redis answers.
func (s *Server) Ready(ctx context.Context) error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}
