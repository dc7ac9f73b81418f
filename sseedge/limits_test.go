package sseedge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// streamEnds waits for resp's body to end and fails the test if it does not.
func streamEnds(t *testing.T, resp *http.Response, within time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, resp.Body); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatal("stream still open")
	}
}

func waitClosed(t *testing.T, e *testEdge, reason sseedge.CloseReason, n float64) {
	t.Helper()
	// A hang guard: hundreds of streams may close at once on a loaded
	// machine.
	testenv.WaitFor(t, 30*time.Second, string(reason)+" in /metrics", func() bool { return e.closed(reason) == n })
}

// sendUntilClosed sends data to user until the edge has closed user's
// stream (the route is no longer online), however fast or slow the machine
// is: a count of sends would assume how many fit in the write timeout. With
// hold > 0, it sends only while the edge holds at most hold bytes queued, so
// that a stream behind a blocked write is closed by the write timeout, never
// by a queue that a fast machine filled first. A minute is a hang guard.
func sendUntilClosed(t *testing.T, e *testEdge, user string, data []byte, hold float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for e.send(t, user, data) == delivery.RouteOnline {
		if time.Now().After(deadline) {
			t.Fatalf("%s's stream was never closed: write_timeout %v, slow_consumer %v, budget closes %v, queued bytes %v", user,
				e.closed(sseedge.CloseWriteTimeout), e.closed(sseedge.CloseSlowConsumer),
				e.metric("herald_sse_queue_budget_closes_total"), e.metric("herald_sse_queued_bytes"))
		}
		if hold > 0 {
			testenv.WaitFor(t, time.Until(deadline), "the edge to hold at most "+strconv.Itoa(int(hold))+" bytes queued",
				func() bool { return e.metric("herald_sse_queued_bytes") <= hold })
		}
	}
}

func TestCloseClientClosed(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, "u", time.Hour), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	waitClosed(t, e, sseedge.CloseClientClosed, 1)
}

// At the per-user limit the newest stream is accepted and the oldest closed.
func TestCloseReplaced(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxConnsPerUser: 2})
	tok := tokenFor(t, "many", time.Hour)
	first := e.open(t, tok)
	time.Sleep(5 * time.Millisecond) // distinct "since" times
	e.open(t, tok)
	time.Sleep(5 * time.Millisecond)
	third := e.open(t, tok)
	streamEnds(t, first, 5*time.Second)
	waitClosed(t, e, sseedge.CloseReplaced, 1)
	// The newest stream still receives.
	id := e.publish(t, "many", []byte("still here"))
	readUntil(t, sseedge.NewDecoder(third.Body), id)
}

// readUntil reads events from dec until the one with id, and returns it.
func readUntil(t *testing.T, dec *sseedge.Decoder, id string) sseedge.Event {
	t.Helper()
	for {
		ev, err := dec.Next()
		if err != nil {
			t.Fatalf("stream ended before event %s: %v", id, err)
		}
		if ev.ID == id {
			return ev
		}
	}
}

// A stalled client whose queue is large enough is closed when a write
// blocks past the write timeout.
func TestCloseWriteTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 300 * time.Millisecond})
	e.open(t, tokenFor(t, "stalled", time.Hour)) // never read
	big := []byte(strings.Repeat("y", 60<<10))
	sendUntilClosed(t, e, "stalled", big, 4*float64(len(big)))
	waitClosed(t, e, sseedge.CloseWriteTimeout, 1)
	if n := e.closed(sseedge.CloseSlowConsumer); n != 0 {
		t.Errorf("slow_consumer = %v, want 0: the queue never filled", n)
	}
}

// When the edge's Redis stays away longer than BrokerGrace, streams are
// closed as broker_lost.
func TestCloseBrokerLost(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	e := newTestEdgeOn(t, rdb, "p:", sseedge.Config{BrokerGrace: 300 * time.Millisecond})
	resp := e.open(t, tokenFor(t, "u", time.Hour))
	srv.Stop()
	streamEnds(t, resp, 10*time.Second)
	waitClosed(t, e, sseedge.CloseBrokerLost, 1)
}

// The edge's link metrics: one working connection and no orphaned channel
// while Redis is up; while it is down, no working connection and every
// channel an orphan; both back once go-redis has reconnected.
func TestRedisLinkMetrics(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	e := newTestEdgeOn(t, rdb, "p:", sseedge.Config{BrokerGrace: time.Minute})
	e.open(t, tokenFor(t, "u1", time.Hour))
	e.open(t, tokenFor(t, "u2", time.Hour))
	links := func() float64 { return e.metric("herald_sse_redis_links") }
	orphaned := func() float64 { return e.metric("herald_sse_redis_orphaned_channels") }
	if l, o := links(), orphaned(); l != 1 || o != 0 {
		t.Fatalf("with Redis up: links %v, orphaned channels %v; want 1, 0", l, o)
	}
	srv.Stop()
	testenv.WaitFor(t, 10*time.Second, "the edge to see its link down", func() bool { return links() == 0 })
	if o := orphaned(); o != 2 {
		t.Errorf("with Redis down: %v orphaned channels, want the 2 users'", o)
	}
	srv.Start()
	testenv.WaitFor(t, 10*time.Second, "the edge to relink", func() bool { return links() == 1 && orphaned() == 0 })
}

// A crowd of clients opening at once (a thundering herd after an edge
// restart) does not take the edge past MaxConns: the ones beyond it get
// edge_full, however their setups interleave.
func TestMaxConnsUnderConcurrentOpens(t *testing.T) {
	t.Parallel()
	const limit, clients = 5, 40
	e := newTestEdge(t, sseedge.Config{MaxConns: limit, MaxConnsPerUser: clients})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		opened int
		full   int
		other  []int
	)
	start := make(chan struct{})
	for i := range clients {
		wg.Go(func() {
			<-start
			resp, err := http.Get(e.url + "/v1/events?access_token=" + tokenFor(t, "herd"+strconv.Itoa(i), time.Hour))
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { resp.Body.Close() })
			mu.Lock()
			defer mu.Unlock()
			switch resp.StatusCode {
			case http.StatusOK:
				opened++
			case http.StatusServiceUnavailable:
				full++
			default:
				other = append(other, resp.StatusCode)
			}
		})
	}
	close(start)
	wg.Wait()
	if opened > limit || opened+full != clients || len(other) > 0 {
		t.Errorf("%d opened, %d refused as full, other answers %v; want at most %d opened and the rest full", opened, full, other, limit)
	}
	if n := e.metric("herald_sse_connections_open"); n > limit {
		t.Errorf("%v streams open, more than MaxConns %d", n, limit)
	}
}

func TestLimitsAndRefusals(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxConns: 2, MaxTopics: 2})
	topicTok, _ := sseedge.IssueToken(secret, "t", time.Hour, time.Now(), "chat.*", "news")
	for _, tc := range []struct {
		name, query string
		status      int
		code        string
	}{
		{"too many topics", "&topic=chat.a&topic=chat.b&topic=news", http.StatusBadRequest, "too_many_topics"},
		{"bad topic name", "&topic=a%20b", http.StatusBadRequest, "bad_topic"},
		{"repeated topic", "&topic=news&topic=news", http.StatusBadRequest, "bad_topic"},
		{"topic not in token", "&topic=admin", http.StatusForbidden, "forbidden_topic"},
	} {
		resp, err := http.Get(e.url + "/v1/events?access_token=" + topicTok + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || body.Error != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, resp.StatusCode, body.Error, tc.status, tc.code)
		}
	}

	// The edge holds at most two streams.
	e.open(t, tokenFor(t, "a", time.Hour))
	e.open(t, topicTok+"&topic=chat.room1&topic=news")
	resp, err := http.Get(e.url + "/v1/events?access_token=" + tokenFor(t, "c", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || body.Error != "edge_full" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream: %d %q, want 503 edge_full with Retry-After", resp.StatusCode, body.Error)
	}
}

// A client that never finishes its headers is cut off (slowloris).
func TestHeaderReadTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{ReadHeaderTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != io.EOF {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the server kept a connection with unfinished headers open")
		}
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{AllowedOrigins: []string{"https://app.example"}})
	pre := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, e.url+"/v1/events", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := pre("https://app.example"); resp.StatusCode != http.StatusNoContent ||
		resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Last-Event-ID") {
		t.Errorf("allowed preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := pre("https://evil.example"); resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("foreign preflight: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ := http.NewRequest(http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, "o", time.Hour), nil)
	req.Header.Set("Origin", "https://app.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("stream lacks Access-Control-Allow-Origin: %v", resp.Header)
	}
}

// The edge speaks HTTP/2 without TLS (h2c), so a browser behind an h2
// proxy is not held to six streams per origin.
func TestHTTP2(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols, TLSClientConfig: &tls.Config{}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, "h2", time.Hour), nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", resp.Proto)
	}
	id := e.publish(t, "h2", []byte("over h2"))
	if ev := readUntil(t, sseedge.NewDecoder(resp.Body), id); ev.Data != "over h2" {
		t.Fatalf("data %q", ev.Data)
	}
}
