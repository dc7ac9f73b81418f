package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// The accounting harness: it drives Notify for many users, some connected
// over SSE and some not, each call with a unique payload and idempotency
// key, retrying a retryable failure with the same key as a careful caller
// does, while a fault happens. Each test checks that the fault met the
// load. Then the books (accounting_ledger_test.go) must show every
// notification that got OK accounted for exactly once, received over SSE
// (live or through Last-Event-ID recovery), pushed through the FCM
// emulator, or dead-lettered, with nothing still queued; and every call
// that failed for good must have failed with a retryable status or a clear
// caller error.

// collector is one user's SSE client, which reconnects (resuming with
// Last-Event-ID) to the next edge URL whenever its stream ends.
type collector struct {
	user string
	urls []string
	mu   sync.Mutex
	got  map[string]int // payload → times received
	// copies says where each payload was received: the edge's URL and the
	// event's id, for the report of one received twice.
	copies map[string][]string
	last   string
	// resumed counts the streams opened with a Last-Event-ID.
	resumed int
	stop    chan struct{}
	done    chan struct{}
}

func (h *harness) collect(user string, urls ...string) {
	c := &collector{user: user, urls: urls, got: map[string]int{}, copies: map[string][]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	h.collectors = append(h.collectors, c)
	ready := make(chan struct{})
	tok := token(h.t, user)
	go c.run(tok, ready)
	h.t.Cleanup(func() { close(c.stop); <-c.done })
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("%s's stream did not open", user)
	}
}

// resumes is how many streams c opened with a Last-Event-ID.
func (c *collector) resumes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resumed
}

func (c *collector) run(tok string, ready chan struct{}) {
	defer close(c.done)
	for i := 0; ; i++ {
		select {
		case <-c.stop:
			return
		default:
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-c.stop:
			case <-ctx.Done():
			}
			cancel()
		}()
		base := c.urls[min(i, len(c.urls)-1)]
		url := base + "/v1/events?access_token=" + tok
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		c.mu.Lock()
		if c.last != "" {
			req.Header.Set("Last-Event-ID", c.last)
		}
		c.mu.Unlock()
		resp, err := http.DefaultClient.Do(req)
		if err == nil && resp.StatusCode == http.StatusOK {
			c.mu.Lock()
			if req.Header.Get("Last-Event-ID") != "" {
				c.resumed++
			}
			c.mu.Unlock()
			if ready != nil {
				close(ready)
				ready = nil
			}
			d := sseedge.NewDecoder(resp.Body)
			for {
				ev, err := d.Next()
				if err != nil {
					break
				}
				c.mu.Lock()
				if id := d.LastEventID(); id != "" {
					c.last = id
				}
				if ev.Data != "" {
					c.got[ev.Data]++
					c.copies[ev.Data] = append(c.copies[ev.Data], fmt.Sprintf("%s stream %d id %s", base, i, ev.ID))
				}
				c.mu.Unlock()
			}
		}
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		select {
		case <-c.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// harness drives and accounts.
type harness struct {
	t          *testing.T
	s          *system
	o          *testenv.Offline
	users      []string
	collectors []*collector

	mu        sync.Mutex
	accepted  map[string]acceptance // notification id → how it was accepted
	refused   int                   // attempts answered with a retryable status
	retryable int                   // calls that gave up with a retryable status
	retried   int                   // calls that succeeded after a retryable failure
	other     map[codes.Code]int
	// allow are the departures from exactly once the fault may cause.
	allow exceptions
	// The fault ran from faultStart to faultEnd (see drive).
	faultStart, faultEnd time.Time
}

// acceptance is a notification the router answered OK.
type acceptance struct {
	payload, user string
	route         heraldv1.Route
	at            time.Time
}

func newHarness(t *testing.T, s *system, o *testenv.Offline) *harness {
	return &harness{t: t, s: s, o: o, accepted: map[string]acceptance{}, other: map[codes.Code]int{}}
}

// drive sends n notifications from 8 concurrent callers, round robin over
// the users. Once a third of them are sent it runs fault on the test's
// goroutine while the calls go on, so that the fault meets the load and
// may use the test's helpers. It returns when every call is done: the
// callers and the feeder never outlive it, even when fault fails the test.
func (h *harness) drive(n int, fault func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				h.call(ctx, i)
			}
		})
	}
	third := make(chan struct{})
	wg.Go(func() {
		defer close(next)
		for i := range n {
			if i == n/3 {
				close(third)
			}
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
			time.Sleep(time.Millisecond) // the callers' pace, not a wait for an event
		}
	})
	<-third
	h.mu.Lock()
	h.faultStart = time.Now()
	h.mu.Unlock()
	fault()
	h.mu.Lock()
	h.faultEnd = time.Now()
	h.mu.Unlock()
	wg.Wait()
}

// call sends notification i, retrying retryable failures with the same
// idempotency key for up to 20 s, or until ctx is done.
func (h *harness) call(ctx context.Context, i int) {
	payload := "n-" + strconv.Itoa(i)
	user := h.users[i%len(h.users)]
	req := &heraldv1.NotifyRequest{UserId: user, Data: []byte(payload), IdempotencyKey: "k-" + strconv.Itoa(i)}
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := h.s.router.Notify(cctx, req)
		cancel()
		if ctx.Err() != nil {
			return // the drive was abandoned
		}
		code := status.Code(err)
		if err == nil {
			h.mu.Lock()
			id := resp.GetNotificationId()
			if prev, dup := h.accepted[id]; dup && prev.payload != payload {
				h.t.Errorf("notification id %s answered for %s and %s", id, prev.payload, payload)
			}
			h.accepted[id] = acceptance{payload: payload, user: user, route: resp.GetRoute(), at: time.Now()}
			if attempt > 0 {
				h.retried++
			}
			h.mu.Unlock()
			return
		}
		retryable := code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.ResourceExhausted
		h.mu.Lock()
		if retryable {
			h.refused++
		}
		if !retryable || time.Now().After(deadline) {
			if retryable {
				h.retryable++
			} else {
				h.other[code]++
				h.t.Errorf("call %d failed with %v: %v", i, code, err)
			}
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond): // the caller's backoff
		}
	}
}

// refusals is how many calls have been answered with a retryable status.
func (h *harness) refusals() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.refused
}

// waitRefused waits, inside a fault, until a call has been refused since
// there were before refusals, and at least atLeast has passed since from:
// the fault lasts until the load has met it.
func (h *harness) waitRefused(fault string, before int, from time.Time, atLeast time.Duration) {
	h.t.Helper()
	testenv.WaitFor(h.t, 20*time.Second, "a Notify to be refused while "+fault, func() bool {
		return h.refusals() > before && time.Since(from) >= atLeast
	})
}

// requireAcross fails the test unless notifications were accepted both
// before the fault began and after it ended: the load ran across it.
func (h *harness) requireAcross() {
	h.t.Helper()
	h.mu.Lock()
	var before, after int
	for _, a := range h.accepted {
		switch {
		case a.at.Before(h.faultStart):
			before++
		case a.at.After(h.faultEnd):
			after++
		}
	}
	window := h.faultEnd.Sub(h.faultStart)
	h.mu.Unlock()
	h.t.Logf("accepted %d before the fault, %d after it (it lasted %v)", before, after, window.Round(time.Millisecond))
	if before == 0 || after == 0 {
		h.t.Fatalf("accepted %d notifications before the fault and %d after it: the load did not run across it", before, after)
	}
}

// setup builds a system with the offline path, online users (connected,
// with a device each) and offline users (a device each).
func setup(t *testing.T, o *testenv.Offline, opts options, online, offline int) (*system, *harness) {
	opts.offline = o
	s := newSystemWith(t, opts)
	h := newHarness(t, s, o)
	for i := range online {
		u := "on-" + strconv.Itoa(i)
		o.Register(t, u, "tok-"+u)
		h.users = append(h.users, u)
	}
	for i := range offline {
		u := "off-" + strconv.Itoa(i)
		o.Register(t, u, "tok-"+u)
		h.users = append(h.users, u)
	}
	return s, h
}

func (h *harness) connectOnline(urls ...string) {
	for _, u := range h.users {
		if u[:3] == "on-" {
			h.collect(u, urls...)
		}
	}
}

const faultLoad = 600

func TestFaultKafkaRestart(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 5, 5)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() {
		before, stopped := h.refusals(), time.Now()
		o.Kafka.Stop()
		// Down for a second, and until a call has met the outage.
		h.waitRefused("Kafka is down", before, stopped, time.Second)
		o.Kafka.Start()
	})
	h.report("kafka stopped 1s", h.settle())
	h.requireAcross()
	if h.retried == 0 {
		t.Fatal("no call was accepted on a retry: the outage did not reach the callers")
	}
}

// stormSends is how many sends each FCM storm answers with its error.
const stormSends = 30

func TestFaultFCMStorms(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 3, 7)
	h.connectOnline(s.edges[0].url)
	reg := prometheus.NewRegistry()
	o.StartWorker(t, o.WorkerConfig(), reg)
	o.Emulator.SetLatency(100*time.Millisecond, 50*time.Millisecond)
	storms := []struct {
		code       fcmtest.ErrorCode
		retryAfter time.Duration
	}{{fcmtest.Unavailable, 0}, {fcmtest.QuotaExceeded, time.Second}, {fcmtest.Internal, 0}}
	h.drive(faultLoad, func() {
		// One storm after the other, each until it has answered its sends:
		// the sends it fails are retried into the next.
		for _, st := range storms {
			id := o.Emulator.FailNext(stormSends, st.code, st.retryAfter)
			testenv.WaitFor(t, 20*time.Second, fmt.Sprintf("the %s storm to answer %d sends", st.code, stormSends), func() bool {
				return !slices.ContainsFunc(o.Emulator.Faults(), func(f fcmtest.Fault) bool { return f.ID == id })
			})
		}
	})
	h.report(fmt.Sprintf("fcm 503, 429 and 500 storms of %d sends each, 100ms latency", stormSends), h.settle())
	errs := o.Emulator.Stats().Errors
	for _, st := range storms {
		if errs[st.code] < stormSends {
			t.Errorf("the emulator answered %s to %d sends, want %d: the storm missed the load", st.code, errs[st.code], stormSends)
		}
	}
	retries := testenv.Counter(t, reg, "herald_fcm_retries_total")
	t.Logf("emulator errors %v; worker retries %v", errs, retries)
	if retries == 0 {
		t.Error("the worker retried nothing: the storms did not reach it")
	}
}

func TestFaultRouterRestart(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 5, 5)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() {
		// A graceful stop (in-flight calls finish), down until a call has
		// been refused, then a new router on the same address.
		before := h.refusals()
		s.restartRouter(t, func() { h.waitRefused("the router is down", before, time.Now(), 0) })
	})
	// Retries with the same idempotency key must not deliver twice.
	h.report("router restarted", h.settle())
	h.requireAcross()
}

func TestFaultWorkerKilled(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 2, 8)
	h.connectOnline(s.edges[0].url)
	o.Emulator.SetLatency(5*time.Millisecond, 2*time.Millisecond)
	child := o.StartChildWorker(t)
	var atKill int
	var backlog map[string]map[int]testenv.Span
	h.drive(faultLoad, func() {
		testenv.WaitFor(t, 20*time.Second, "the child worker to push", func() bool { return o.Emulator.Count() > 0 })
		_ = child.Process.Signal(syscall.SIGKILL)
		_ = child.Wait()
		atKill, backlog = o.Emulator.Count(), o.Backlog(t)
		o.StartWorker(t, o.WorkerConfig(), nil)
	})
	h.allow.pushedTwice = true
	h.report("worker killed with SIGKILL mid-batch", h.settle())
	h.requireAcross()
	// The dead worker left records it had not committed; the next one
	// pushed them.
	t.Logf("killed after %d pushes, leaving %v uncommitted; %d pushes in all", atKill, backlog, o.Emulator.Count())
	if len(backlog) == 0 || o.Emulator.Count() <= atKill {
		t.Fatalf("killed after %d pushes with %v uncommitted, %d pushes in all: the kill left the next worker nothing to do",
			atKill, backlog, o.Emulator.Count())
	}
}

func TestFaultEdgeKilled(t *testing.T) {
	const ttl = time.Second
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1, leaseTTL: ttl}, 5, 5)
	url, proc := s.startChildEdge(t, ttl)
	// The online users are on the child edge; when it dies, they reconnect
	// to the other one and recover their gap from history.
	h.connectOnline(url, s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() {
		_ = proc.Process.Signal(syscall.SIGKILL)
		_ = proc.Wait()
	})
	h.allow.sseAndPush = true
	h.report("edge killed with SIGKILL", h.settle())
	h.requireAcross()
	for _, c := range h.collectors {
		if c.resumes() == 0 {
			t.Errorf("%s never resumed with a Last-Event-ID: the edge's death did not reach its stream", c.user)
		}
	}
}

func TestFaultRedisRestart(t *testing.T) {
	srv := testenv.StartRedisServer(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	o := testenv.StartOfflineOn(t, 2, rdb, testenv.Prefix(t))
	s, h := setup(t, o, options{edges: 1}, 5, 5)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() {
		// SIGTERM (the append-only file is flushed), down until a call has
		// been refused, then started again on its port.
		before := h.refusals()
		srv.Shutdown()
		h.waitRefused("Redis is down", before, time.Now(), 0)
		srv.Start()
	})
	// Leases that expired while Redis was down are renewed as soon as the
	// edge's link returns; a notification accepted in between finds its
	// user offline and is pushed, and the open stream also catches it up
	// from history (docs/reliability.md).
	h.allow.sseAndPush = true
	h.report("redis-server restarted", h.settle())
	h.requireAcross()
}
