package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// The accounting harness: it drives Notify for many users, some connected
// over SSE and some not, each call with a unique payload and idempotency
// key, retrying a retryable failure with the same key as a careful caller
// does, while a fault happens. Then it checks that every notification that
// got OK ended up somewhere: received over SSE (live or through
// Last-Event-ID recovery), pushed through the FCM emulator, in the
// dead-letter topic, or still queued; and that every call that failed for
// good failed with a retryable status or a clear caller error.

// collector is one user's SSE client, which reconnects (resuming with
// Last-Event-ID) to the next edge URL whenever its stream ends.
type collector struct {
	user string
	urls []string
	mu   sync.Mutex
	got  map[string]int // payload → times received
	last string
	stop chan struct{}
	done chan struct{}
}

func (h *harness) collect(user string, urls ...string) {
	c := &collector{user: user, urls: urls, got: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	h.collectors = append(h.collectors, c)
	ready := make(chan struct{})
	go c.run(h.t, ready)
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("%s's stream did not open", user)
	}
	h.t.Cleanup(func() { close(c.stop); <-c.done })
}

func (c *collector) run(tb testing.TB, ready chan struct{}) {
	defer close(c.done)
	tok := token(tb, c.user)
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
		url := c.urls[min(i, len(c.urls)-1)] + "/v1/events?access_token=" + tok
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		c.mu.Lock()
		if c.last != "" {
			req.Header.Set("Last-Event-ID", c.last)
		}
		c.mu.Unlock()
		resp, err := http.DefaultClient.Do(req)
		if err == nil && resp.StatusCode == http.StatusOK {
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
	accepted  map[string]string // notification id → payload
	retryable int               // calls that gave up with a retryable status
	retried   int               // calls that succeeded after a retryable failure
	other     map[codes.Code]int
}

func newHarness(t *testing.T, s *system, o *testenv.Offline) *harness {
	return &harness{t: t, s: s, o: o, accepted: map[string]string{}, other: map[codes.Code]int{}}
}

// drive sends n notifications from 8 concurrent callers, round robin over
// the users, calling fault once a third of them are sent.
func (h *harness) drive(n int, fault func()) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				h.call(i)
			}
		}()
	}
	for i := range n {
		if i == n/3 && fault != nil {
			fault()
		}
		next <- i
		time.Sleep(time.Millisecond)
	}
	close(next)
	wg.Wait()
}

// call sends notification i, retrying retryable failures with the same
// idempotency key for up to 20 s.
func (h *harness) call(i int) {
	payload := "n-" + strconv.Itoa(i)
	req := &heraldv1.NotifyRequest{UserId: h.users[i%len(h.users)], Data: []byte(payload), IdempotencyKey: "k-" + strconv.Itoa(i)}
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := h.s.router.Notify(ctx, req)
		cancel()
		code := status.Code(err)
		if err == nil {
			h.mu.Lock()
			if prev, dup := h.accepted[resp.GetNotificationId()]; dup && prev != payload {
				h.t.Errorf("notification id %s answered for %s and %s", resp.GetNotificationId(), prev, payload)
			}
			h.accepted[resp.GetNotificationId()] = payload
			if attempt > 0 {
				h.retried++
			}
			h.mu.Unlock()
			return
		}
		retryable := code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.ResourceExhausted
		if !retryable || time.Now().After(deadline) {
			h.mu.Lock()
			if retryable {
				h.retryable++
			} else {
				h.other[code]++
				h.t.Errorf("call %d failed with %v: %v", i, code, err)
			}
			h.mu.Unlock()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tally is where the accepted notifications are.
type tally struct {
	accepted, sse, push, both, dead, queued, lost, dupSSE, dupPush int
	lostIDs                                                        []string
}

func (t tally) String() string {
	return fmt.Sprintf("accepted=%d sse=%d push=%d (of which also sse=%d) dead_lettered=%d queued=%d lost=%d duplicates(sse=%d push=%d)",
		t.accepted, t.sse, t.push, t.both, t.dead, t.queued, t.lost, t.dupSSE, t.dupPush)
}

// count looks everywhere once.
func (h *harness) count() tally {
	sse := map[string]int{}
	for _, c := range h.collectors {
		c.mu.Lock()
		for p, n := range c.got {
			sse[p] += n
		}
		c.mu.Unlock()
	}
	pushed := map[string]int{}
	for _, m := range h.o.Emulator.Messages() {
		pushed[m.Data[fcm.DataID]]++
	}
	dead := map[string]bool{}
	for _, d := range h.o.DeadLetters(h.t) {
		dead[d.GetEnvelope().GetId()] = true
	}
	queued := map[string]bool{}
	for _, topic := range []string{delivery.DefaultOfflineTopic, delivery.DefaultRetryTopic} {
		for _, m := range h.o.Kafka.ReadAll(topic) {
			for _, hd := range m.Headers {
				if hd.Key == delivery.HeaderNotificationID {
					queued[string(hd.Value)] = true
				}
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	t := tally{accepted: len(h.accepted)}
	for id, payload := range h.accepted {
		s, p := sse[payload], pushed[id]
		if s > 1 {
			t.dupSSE++
		}
		if p > 1 {
			t.dupPush++
		}
		switch {
		case s > 0 && p > 0:
			t.sse++
			t.push++
			t.both++
		case s > 0:
			t.sse++
		case p > 0:
			t.push++
		case dead[id]:
			t.dead++
		case queued[id]:
			t.queued++
		default:
			t.lost++
			t.lostIDs = append(t.lostIDs, id)
		}
	}
	return t
}

// settle waits until nothing is queued or lost any more (or 60 s), and
// returns the final tally.
func (h *harness) settle() tally {
	var t tally
	deadline := time.Now().Add(60 * time.Second)
	for {
		t = h.count()
		if t.queued == 0 && t.lost == 0 || time.Now().After(deadline) {
			return t
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// report logs the accounting line and fails on a loss.
func (h *harness) report(name string, t tally) {
	h.t.Helper()
	h.mu.Lock()
	line := fmt.Sprintf("accounting[%s]: %s failed_retryable=%d failed_other=%d (accepted after a retry: %d)",
		name, t, h.retryable, len(h.other), h.retried)
	h.mu.Unlock()
	h.t.Log(line)
	if t.lost > 0 {
		h.t.Fatalf("%s\nlost: %v", line, t.lostIDs)
	}
	if t.accepted == 0 {
		h.t.Fatalf("%s\nnothing was accepted", line)
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
		o.Kafka.Stop()
		go func() { time.Sleep(time.Second); o.Kafka.Start() }()
	})
	h.report("kafka stopped 1s", h.settle())
	if h.retried == 0 {
		t.Fatal("no call saw Kafka down: the fault did not happen")
	}
}

func TestFaultFCMStorms(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 3, 7)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	o.Emulator.SetLatency(100*time.Millisecond, 50*time.Millisecond)
	h.drive(faultLoad, func() {
		o.Emulator.FailFor(time.Second, "UNAVAILABLE", 0)
		go func() {
			time.Sleep(time.Second)
			o.Emulator.FailFor(time.Second, "QUOTA_EXCEEDED", time.Second)
			o.Emulator.FailFor(time.Second, "INTERNAL", 0)
		}()
	})
	h.report("fcm 503, 429 and 500 storms, 100ms latency", h.settle())
}

func TestFaultRouterRestart(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 5, 5)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() { s.restartRouter(t) })
	tl := h.settle()
	h.report("router restarted", tl)
	if tl.dupSSE > 0 || tl.dupPush > 0 {
		t.Fatalf("retries with the same idempotency key delivered twice: %s", tl)
	}
}

func TestFaultWorkerKilled(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s, h := setup(t, o, options{edges: 1}, 2, 8)
	h.connectOnline(s.edges[0].url)
	o.Emulator.SetLatency(5*time.Millisecond, 2*time.Millisecond)
	child := o.StartChildWorker(t)
	h.drive(faultLoad, func() {
		testenv.WaitFor(t, 20*time.Second, "the child worker to push", func() bool { return o.Emulator.Count() > 0 })
		_ = child.Process.Signal(syscall.SIGKILL)
		_ = child.Wait()
		o.StartWorker(t, o.WorkerConfig(), nil)
	})
	h.report("worker killed with SIGKILL mid-batch", h.settle())
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
	h.report("edge killed with SIGKILL", h.settle())
}

func TestFaultRedisRestart(t *testing.T) {
	srv := testenv.StartRedisServer(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	o := testenv.StartOfflineOn(t, 2, rdb, testenv.Prefix(t))
	s, h := setup(t, o, options{edges: 1}, 5, 5)
	h.connectOnline(s.edges[0].url)
	o.StartWorker(t, o.WorkerConfig(), nil)
	h.drive(faultLoad, func() { srv.Restart() })
	h.report("redis-server restarted", h.settle())
}
