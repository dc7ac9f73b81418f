package sseedge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// Each test here abuses an edge and then checks that it still serves a
// normal client: stillServes opens a stream and reads an event on it.

var userSeq struct {
	sync.Mutex
	n int
}

// freshUser returns a user id no other test uses on the edge.
func freshUser(prefix string) string {
	userSeq.Lock()
	defer userSeq.Unlock()
	userSeq.n++
	return prefix + strconv.Itoa(userSeq.n)
}

func stillServes(t *testing.T, e *testEdge) {
	t.Helper()
	user := freshUser("normal")
	resp := e.open(t, tokenFor(t, user, time.Hour))
	id := e.publish(t, user, []byte("still serving"))
	if ev := readUntil(t, sseedge.NewDecoder(resp.Body), id); ev.Data != "still serving" {
		t.Fatalf("data %q", ev.Data)
	}
}

// request sends req and returns the status and the error code of a JSON
// refusal body; a stream that opens is closed at once.
func request(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error
}

// openStream opens a stream with extra headers and returns its status,
// error code and a function that closes it.
func openStream(t *testing.T, e *testEdge, tok string, hdr ...string) (int, string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
	for i := 0; i < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	closeIt := func() { cancel(); resp.Body.Close() }
	t.Cleanup(closeIt)
	if resp.StatusCode == http.StatusOK {
		return http.StatusOK, "", closeIt
	}
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	closeIt()
	return resp.StatusCode, body.Error, closeIt
}

func TestConnsPerIP(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{MaxConnsPerIP: 2})
	// Refused requests give their place back.
	for range 5 {
		if status, _, _ := openStream(t, e, "bad"); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", status)
		}
	}
	_, _, closeFirst := openStream(t, e, tokenFor(t, "ip-a", time.Hour))
	openStream(t, e, tokenFor(t, "ip-b", time.Hour))
	for range 3 {
		if status, code, _ := openStream(t, e, tokenFor(t, "ip-c", time.Hour)); status != http.StatusTooManyRequests || code != "too_many_connections" {
			t.Fatalf("third stream from one address: %d %q, want 429 too_many_connections", status, code)
		}
	}
	closeFirst()
	testenv.WaitFor(t, 5*time.Second, "a place to free up", func() bool {
		status, _, closeIt := openStream(t, e, tokenFor(t, "ip-c", time.Hour))
		closeIt()
		return status == http.StatusOK
	})
}

// Behind a trusted proxy each client address counts on its own; a client
// cannot choose its address by sending X-Forwarded-For itself.
func TestConnsPerIPBehindProxy(t *testing.T) {
	t.Parallel()
	proxied := newTestEdge(t, sseedge.Config{MaxConnsPerIP: 1, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	for _, tc := range []struct {
		xff    string
		status int
	}{
		{"203.0.113.7", http.StatusOK},
		{"203.0.113.7", http.StatusTooManyRequests},
		{"198.51.100.1, 203.0.113.7", http.StatusTooManyRequests}, // the client's own entry is ignored
		{"203.0.113.7, 127.0.0.2", http.StatusTooManyRequests},    // a chain of trusted proxies
		{"203.0.113.7:41234", http.StatusTooManyRequests},         // with a port, as some balancers write it
		{"203.0.113.8", http.StatusOK},
		{"2001:db8::1", http.StatusOK},
		{"2001:db8::2", http.StatusTooManyRequests}, // the same /64
		{"2001:db8:0:1::1", http.StatusOK},
		{"::ffff:203.0.113.8", http.StatusTooManyRequests}, // IPv4-mapped
	} {
		if status, _, _ := openStream(t, proxied, tokenFor(t, freshUser("xff"), time.Hour), "X-Forwarded-For", tc.xff); status != tc.status {
			t.Errorf("X-Forwarded-For %q: %d, want %d", tc.xff, status, tc.status)
		}
	}

	direct := newTestEdge(t, sseedge.Config{MaxConnsPerIP: 1})
	openStream(t, direct, tokenFor(t, "d1", time.Hour), "X-Forwarded-For", "203.0.113.1")
	if status, _, _ := openStream(t, direct, tokenFor(t, "d2", time.Hour), "X-Forwarded-For", "203.0.113.2"); status != http.StatusTooManyRequests {
		t.Errorf("X-Forwarded-For from an untrusted peer was believed: %d, want 429", status)
	}
	stillServes(t, proxied)
}

// Clients that send their headers a byte at a time, never finishing, are
// cut off at ReadHeaderTimeout, while normal clients are served.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{ReadHeaderTimeout: 300 * time.Millisecond})
	const n = 20
	cut := make(chan time.Duration, n)
	for range n {
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		start := time.Now()
		go func() {
			_, _ = io.WriteString(conn, "GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
			for {
				time.Sleep(50 * time.Millisecond)
				if _, err := conn.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		go func() {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := bufio.NewReader(conn).ReadString('\n')
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				cut <- -1
				return
			}
			cut <- time.Since(start)
		}()
	}
	stillServes(t, e)
	for range n {
		if d := <-cut; d < 0 || d > 3*time.Second {
			t.Fatalf("a slowloris connection lasted %v (-1: never cut)", d)
		}
	}
	stillServes(t, e)
}

// A client that stops reading is closed when a write blocks past the write
// timeout; the edge goes on serving.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 300 * time.Millisecond})
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	stalled := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, "reader", time.Hour), nil)
	resp, err := stalled.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	big := []byte(strings.Repeat("z", 32<<10))
	sendUntilClosed(t, e, "reader", big, 4*float64(len(big)))
	waitClosed(t, e, sseedge.CloseWriteTimeout, 1)
	stillServes(t, e)
}

func TestOversizedRequests(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	tok := tokenFor(t, "big", time.Hour)
	get := func(query string, hdr ...string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, e.url+"/v1/events?access_token="+tok+query, nil)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		return request(t, req)
	}
	for _, tc := range []struct {
		name   string
		query  string
		hdr    []string
		status int
		code   string
	}{
		{"8 KiB of cookies", "", []string{"Cookie", "c=" + strings.Repeat("x", 8<<10)}, http.StatusOK, ""},
		{"6 KiB URL", "&pad=" + strings.Repeat("x", 6<<10), nil, http.StatusOK, ""},
		{"32 KiB header", "", []string{"X-Big", strings.Repeat("x", 32<<10)}, http.StatusRequestHeaderFieldsTooLarge, ""},
		{"10 KiB URL", "&pad=" + strings.Repeat("x", 10<<10), nil, http.StatusRequestURITooLong, "uri_too_long"},
		{"40 KiB URL", "&pad=" + strings.Repeat("x", 40<<10), nil, http.StatusRequestHeaderFieldsTooLarge, ""},
		{"1 MiB URL", "&pad=" + strings.Repeat("x", 1<<20), nil, http.StatusRequestHeaderFieldsTooLarge, ""},
	} {
		if status, code := get(tc.query, tc.hdr...); status != tc.status || code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, code, tc.status, tc.code)
		}
	}
	stillServes(t, e)
}

func TestOversizedAck(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	tok := tokenFor(t, "acker", time.Hour)
	post := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/ack", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		return request(t, req)
	}
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = `"1"`
	}
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"100 KiB body", `{"ids":["` + strings.Repeat("1", 100<<10) + `"]}`, http.StatusRequestEntityTooLarge, "too_large"},
		{"300 ids", `{"ids":[` + strings.Join(ids, ",") + `]}`, http.StatusBadRequest, "bad_ids"},
		{"a huge id", `{"ids":["` + strings.Repeat("9", 60<<10) + `"]}`, http.StatusBadRequest, "bad_ids"},
		{"invalid UTF-8", "{\"ids\":[\"\xff\"]}", http.StatusBadRequest, "bad_ids"},
		{"not JSON", "\xff\xfe", http.StatusBadRequest, "bad_body"},
		{"a good ack", `{"ids":["1"]}`, http.StatusOK, ""},
	} {
		if status, code := post(tc.body); status != tc.status || code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, code, tc.status, tc.code)
		}
	}
	stillServes(t, e)
}

// Whatever a client sends as Last-Event-ID, the stream opens (or, for a
// URL over the limit, gets a clean 414 or 431), tells the client to re-fetch
// its state with a herald.reset, since the edge cannot place it, and goes on
// to deliver live events.
func TestMalformedLastEventID(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	for _, tc := range []struct {
		name, id string
	}{
		{"garbage", "garbage"},
		{"negative", "-1"},
		{"zero", "0"},
		{"ancient", "1"},
		{"over uint64", "99999999999999999999999999"},
		{"max uint64", "18446744073709551615"},
		{"future", "9999999999999999"},
		{"10 KB of digits", strings.Repeat("9", 10<<10)},
		{"10 KB of separators", strings.Repeat(";", 10<<10)},
		{"10 KB of parts", strings.Repeat("1;x=1", 2<<10)},
		{"invalid UTF-8", "\xff\xfe\xfd"},
		{"invalid UTF-8 topic", "1;chat=\xff"},
		{"NUL", "1\x00"},
		{"empty parts", "1;;;=;=1;a="},
		{"only a topic", "chat=1"},
	} {
		for _, via := range []string{"header", "query"} {
			for _, history := range []bool{false, true} {
				name := tc.name + " in the " + via
				if history {
					name += " with history"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					if via == "header" && strings.ContainsAny(tc.id, "\x00") {
						t.Skip("not a valid header value")
					}
					user := freshUser("lei")
					if history {
						publishTo(t, e, user, "before")
					}
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					tok, _ := sseedge.IssueToken(secret, user, time.Hour, time.Now(), "chat")
					u := e.url + "/v1/events?access_token=" + tok + "&topic=chat"
					if via == "query" {
						u += "&last_event_id=" + url.QueryEscape(tc.id)
					}
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
					if via == "header" {
						req.Header.Set("Last-Event-ID", tc.id)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					if len(req.URL.RequestURI()) > 8<<10 {
						if resp.StatusCode != http.StatusRequestURITooLong && resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
							t.Fatalf("%d-byte URL: status %s, want 414 or 431", len(req.URL.RequestURI()), resp.Status)
						}
						return
					}
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("status %s", resp.Status)
					}
					dec := sseedge.NewDecoder(resp.Body)
					// The stream is set up (subscribed, leased) before
					// its first bytes are written.
					if _, err := dec.Next(); err != nil {
						t.Fatal(err)
					}
					id := publishTo(t, e, user, "live")
					done := make(chan error, 1)
					go func() {
						reset := false
						for {
							ev, err := dec.Next()
							switch {
							case err != nil:
								done <- err
							case ev.Event == sseedge.ResetEvent:
								reset = true
								continue
							case ev.Data != "live":
								continue
							case !reset:
								done <- errors.New("no herald.reset before the live event")
							case !strings.HasPrefix(ev.ID, id+";chat="):
								done <- errors.New("live event with id " + ev.ID + ", want " + id + ";chat=...")
							default:
								done <- nil
							}
							return
						}
					}()
					select {
					case err := <-done:
						if err != nil {
							t.Fatal(err)
						}
					case <-time.After(5 * time.Second):
						t.Fatal("the stream never delivered the live event")
					}
				})
			}
		}
	}
	t.Cleanup(func() { stillServes(t, e) })
}

// publishTo sends data to user, who must be online if online is set, and
// returns its event id. Unlike e.publish it is safe in parallel tests.
func publishTo(t *testing.T, e *testEdge, user, data string) string {
	t.Helper()
	now := time.Now()
	env := &heraldv1.Envelope{Id: delivery.NewID(now), UserId: user, Data: []byte(data), AcceptedAt: timestamppb.New(now)}
	res, err := e.pub.Publish(context.Background(), env, "")
	if err != nil {
		t.Fatal(err)
	}
	return res.EventID
}

func TestInvalidUTF8Params(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	topicTok, _ := sseedge.IssueToken(secret, "utf", time.Hour, time.Now(), "*")
	for _, tc := range []struct {
		name, query, auth string
		status            int
		code              string
	}{
		{"token", "access_token=%FF%FE%FD", "", http.StatusUnauthorized, "unauthorized"},
		{"token with a NUL", "access_token=a%00b", "", http.StatusUnauthorized, "unauthorized"},
		{"bearer token", "", "Bearer \xff\xfe.\xfd.\xfc", http.StatusUnauthorized, "unauthorized"},
		{"token in a bare header", "", "\xff\xfe", http.StatusUnauthorized, "unauthorized"},
		{"topic", "access_token=" + topicTok + "&topic=%FF", "", http.StatusBadRequest, "bad_topic"},
		{"topic, valid UTF-8", "access_token=" + topicTok + "&topic=caf%C3%A9", "", http.StatusBadRequest, "bad_topic"},
		{"topic with a NUL", "access_token=" + topicTok + "&topic=a%00", "", http.StatusBadRequest, "bad_topic"},
		{"topic with a newline", "access_token=" + topicTok + "&topic=a%0Aevent:x", "", http.StatusBadRequest, "bad_topic"},
		{"empty topic", "access_token=" + topicTok + "&topic=", "", http.StatusBadRequest, "bad_topic"},
	} {
		req, _ := http.NewRequest(http.MethodGet, e.url+"/v1/events?"+tc.query, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		if status, code := request(t, req); status != tc.status || code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, code, tc.status, tc.code)
		}
	}
	stillServes(t, e)
}

func TestManyTopics(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	tok, _ := sseedge.IssueToken(secret, "topics", time.Hour, time.Now(), "*")
	many := func(n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString("&topic=t" + strconv.Itoa(i))
		}
		return b.String()
	}
	for _, tc := range []struct {
		n      int
		status int
		code   string
	}{
		{16, http.StatusOK, ""},
		{17, http.StatusBadRequest, "too_many_topics"},
		{500, http.StatusBadRequest, "too_many_topics"},
		{2000, http.StatusRequestURITooLong, "uri_too_long"},
	} {
		req, _ := http.NewRequest(http.MethodGet, e.url+"/v1/events?access_token="+tok+many(tc.n), nil)
		if status, code := request(t, req); status != tc.status || code != tc.code {
			t.Errorf("%d topics: %d %q, want %d %q", tc.n, status, code, tc.status, tc.code)
		}
	}
	stillServes(t, e)
}
