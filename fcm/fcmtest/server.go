// Package fcmtest is an emulator of the FCM HTTP v1 send API, for tests and
// local runs: the real firebase-admin-go messaging client, pointed at it,
// sends messages that it records, and meets the errors, throttling and
// latency that a test scripts.
package fcmtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// DevAddr is where the emulator listens when it runs on its own, for local
// runs: the default of cmd/fcm-emulator's -addr. Port 9097, because 9099 is
// the Firebase Auth emulator's. Config.Addr defaults to a free port instead,
// for tests.
const DevAddr = "127.0.0.1:9097"

// Config configures a Server. The zero value is an emulator that accepts
// every valid send at once, on a free loopback port.
type Config struct {
	// Addr is where Start listens. Empty means 127.0.0.1:0, a free loopback
	// port, so that parallel tests never collide.
	Addr string
	// Project, when set, is the only project served: a send to another
	// answers 403 PERMISSION_DENIED, as FCM does to credentials without
	// rights on the project, which catches a client configured with the wrong
	// project. Empty serves every project.
	Project string
	// Latency is added to every send. Zero adds none.
	Latency time.Duration
	// Jitter varies the latency uniformly by up to this much either way.
	Jitter time.Duration
	// Rate limits the sends to this many a second; the sends beyond it answer
	// 429 QUOTA_EXCEEDED with a Retry-After. Zero means no limit.
	Rate float64
	// Burst is how many sends may come at once under Rate. Zero means one
	// second's worth, so that a sender keeping to Rate is never refused.
	Burst int
	// QuotaPerMinute is the project's FCM quota in messages a minute (FCM's
	// default is 600,000): the sends beyond it answer 429 QUOTA_EXCEEDED
	// with a Retry-After, as FCM's do. It is Rate by another name,
	// QuotaPerMinute/60 a second with bursts of Burst, so it is kept over
	// every second, not only over a whole minute: a sender that stays under
	// it that way is never refused by FCM either. Zero means no quota; Rate,
	// when set, wins.
	QuotaPerMinute int
	// MaxRecords is how many messages, attempts and 429 times are kept; the
	// oldest go first. Zero means 100000, enough for any test, while a
	// long-running emulator stays bounded.
	MaxRecords int
	// Logger receives a debug line per send and an info line per change of
	// faults. Nil discards.
	Logger *slog.Logger
	// Now is the clock of the records, the fault durations and the rate
	// limit. Nil means time.Now; a test may step a fake clock instead. The
	// latency is always real time.
	Now func() time.Time
}

// Server is an FCM emulator. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	handler http.Handler

	closing   chan struct{} // closed by Close: ends the latency waits
	closeOnce sync.Once
	hs        *http.Server
	url       string
	served    chan struct{} // closed when Start's serving goroutine ends

	connMu sync.Mutex
	idle   map[net.Conn]bool // the started server's connections with no request in progress

	mu        sync.Mutex
	seq       uint64
	faults    faultList
	latency   time.Duration
	jitter    time.Duration
	rate      float64
	burst     int
	bucket    bucket
	messages  capped[Message]
	attempts  capped[Attempt]
	throttled capped[time.Time]
	stats     Stats         // without Throttled, which is kept apart
	changed   chan struct{} // closed and replaced whenever a message is recorded or the records reset
}

// New returns an emulator configured by cfg. Serve its Handler, or Start it
// on its own listener.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Latency < 0 || cfg.Jitter < 0:
		return nil, errors.New("fcmtest: negative latency")
	case cfg.Rate < 0 || cfg.Burst < 0 || cfg.QuotaPerMinute < 0:
		return nil, errors.New("fcmtest: negative rate limit")
	case cfg.MaxRecords < 0:
		return nil, errors.New("fcmtest: negative MaxRecords")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.MaxRecords == 0 {
		cfg.MaxRecords = 100000
	}
	if cfg.Rate == 0 && cfg.QuotaPerMinute > 0 {
		cfg.Rate = float64(cfg.QuotaPerMinute) / 60
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		now:       cfg.Now,
		closing:   make(chan struct{}),
		messages:  capped[Message]{max: cfg.MaxRecords},
		attempts:  capped[Attempt]{max: cfg.MaxRecords},
		throttled: capped[time.Time]{max: cfg.MaxRecords},
		stats:     Stats{Errors: make(map[ErrorCode]int)},
		changed:   make(chan struct{}),
	}
	s.restoreSettings()
	s.handler = s.routes()
	return s, nil
}

// TB is the part of testing.TB that NewServer uses. It is declared here so
// that binaries embedding the emulator do not link the testing package.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// NewServer starts an emulator for a test and closes it when the test ends.
func NewServer(tb TB, cfg Config) *Server {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// routes is the emulator's HTTP API: FCM's send method under /v1 and the
// inspection and fault API under /emulator.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/projects/{project}/messages:send", s.handleSend)
	mux.HandleFunc("/v1/", s.handleNotFound)
	mux.HandleFunc("/v1", s.handleNotFound)
	s.adminRoutes(mux)
	return mux
}

// Handler serves the emulator's HTTP API, for mounting on a listener of the
// caller's own.
func (s *Server) Handler() http.Handler { return s.handler }

// Start serves the emulator on Config.Addr until Close.
func (s *Server) Start() error {
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("fcmtest: %w", err)
	}
	s.mu.Lock()
	if s.hs != nil || s.isClosing() {
		s.mu.Unlock()
		lis.Close()
		return errors.New("fcmtest: already started, or closed")
	}
	s.idle = make(map[net.Conn]bool)
	s.hs = &http.Server{Handler: s.handler, ReadHeaderTimeout: 5 * time.Second, ConnState: s.trackConn}
	// FCM speaks HTTP/2; without TLS here, a client that asks for HTTP/2
	// with prior knowledge (h2c) gets it, and HTTP/1.1 clients still work.
	s.hs.Protocols = new(http.Protocols)
	s.hs.Protocols.SetHTTP1(true)
	s.hs.Protocols.SetUnencryptedHTTP2(true)
	s.url = "http://" + lis.Addr().String()
	s.served = make(chan struct{})
	s.mu.Unlock()
	go func() {
		defer close(s.served)
		_ = s.hs.Serve(lis)
	}()
	return nil
}

// Close ends the latency waits in progress (they answer 503 UNAVAILABLE),
// and stops the server that Start started. It is safe to call more than
// once.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		hs := s.hs
		s.mu.Unlock()
		if hs == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- hs.Shutdown(ctx) }()
		// Shutdown waits up to five seconds for a connection that was opened
		// but never sent a request, as clients with a pool dial them. Those
		// carry nothing to finish: close them at once, until Shutdown is done.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for done := false; !done; {
			s.closeIdleConns()
			select {
			case err = <-errc:
				done = true
			case <-tick.C:
			}
		}
		if err != nil {
			err = hs.Close()
		}
		<-s.served
	})
	return err
}

func (s *Server) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// trackConn keeps the set of connections between requests.
func (s *Server) trackConn(c net.Conn, st http.ConnState) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	switch st {
	case http.StateNew, http.StateIdle:
		s.idle[c] = true
	default:
		delete(s.idle, c)
	}
}

// closeIdleConns closes the connections between requests.
func (s *Server) closeIdleConns() {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for c := range s.idle {
		c.Close()
		delete(s.idle, c)
	}
}

// URL is the base URL of the started server, such as http://127.0.0.1:41234,
// or empty before Start.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Endpoint is the URL to give the messaging client with
// option.WithEndpoint: URL()+"/v1", or empty before Start.
func (s *Server) Endpoint() string {
	if u := s.URL(); u != "" {
		return u + "/v1"
	}
	return ""
}

// handleNotFound answers a path FCM does not serve, in Google's shape. The
// legacy batch endpoint (SendAll) lands here too: FCM has shut it down.
func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusNotFound, errorBody{Error: errorStatus{
		Code:    http.StatusNotFound,
		Message: fmt.Sprintf("The requested URL %s was not found on this server.", r.URL.Path),
		Status:  "NOT_FOUND",
	}})
}

// maxBody bounds a send request's body; FCM refuses far smaller messages.
const maxBody = 1 << 20

// handleSend is FCM's messages:send.
func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	received := s.now()
	project := r.PathValue("project")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	req, reqErr := parseSend(body)
	if err != nil {
		reqErr = &requestError{message: "Request payload size exceeds the limit: " + err.Error()}
	}

	s.mu.Lock()
	d := delay(s.latency, s.jitter)
	s.mu.Unlock()
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client is gone: nothing to answer, nothing to count
		case <-s.closing:
			t.Stop()
			writeError(w, answer{code: Unavailable})
			return
		}
	}

	s.mu.Lock()
	att := Attempt{Project: project, Token: req.token, ValidateOnly: req.validateOnly, Received: received, Answered: s.now()}
	a := s.decide(project, req, reqErr, att.Answered)
	att.Code, att.RetryAfter = a.code, a.retryAfter
	if a.code == "" {
		att.Status = http.StatusOK
		att.Name = s.accept(project, req, received)
	} else {
		att.Status = a.code.HTTPStatus()
		s.stats.Errors[a.code]++
		if att.Status == http.StatusTooManyRequests {
			s.throttled.add(att.Answered)
		}
	}
	s.stats.Requests++
	s.attempts.add(att)
	s.mu.Unlock()

	s.log.LogAttrs(r.Context(), slog.LevelDebug, "fcm send",
		slog.String("project", project), slog.String("token", req.token),
		slog.Int("status", att.Status), slog.String("code", string(att.Code)))
	if a.code != "" {
		writeError(w, a)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": att.Name})
}

// decide answers a send request: the faults for every request first, then
// the project, the rate limit, the body, and the faults for its token.
// s.mu is held.
func (s *Server) decide(project string, req sendRequest, reqErr *requestError, now time.Time) answer {
	if a, ok := s.faults.match("", now); ok {
		return a
	}
	if s.cfg.Project != "" && project != s.cfg.Project {
		return answer{code: PermissionDenied, message: fmt.Sprintf(
			"Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/%s' (or it may not exist).", project)}
	}
	if ok, wait := s.bucket.take(now); !ok {
		return answer{code: QuotaExceeded, retryAfter: wait}
	}
	if reqErr != nil {
		return reqErr.answer()
	}
	if req.token != "" {
		if a, ok := s.faults.match(req.token, now); ok {
			return a
		}
	}
	return answer{}
}

// accept records an accepted send and returns its name. A validate_only
// send gets FCM's fixed dry-run name and is not recorded. s.mu is held.
func (s *Server) accept(project string, req sendRequest, received time.Time) string {
	if req.validateOnly {
		s.stats.Validated++
		return "projects/" + project + "/messages/fake_message_id"
	}
	s.seq++
	name := fmt.Sprintf("projects/%s/messages/0:%d%%%08x", project, received.UnixMicro(), s.seq)
	s.messages.add(Message{
		Name: name, Project: project,
		Token: req.token, Topic: req.topic, Condition: req.condition,
		Data: req.data, Received: received, Raw: req.message,
	})
	s.stats.Accepted++
	close(s.changed)
	s.changed = make(chan struct{})
	return name
}
