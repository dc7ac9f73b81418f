package sseedge_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// A query string that does not parse (a ';' in a pair, which net/url's
// Query silently drops) is refused, rather than opening a stream without
// the topics asked for.
func TestMalformedQueryRefused(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	tok, err := sseedge.IssueToken(secret, "semi", time.Hour, time.Now(), "chat.*")
	if err != nil {
		t.Fatal(err)
	}
	for _, query := range []string{"&topic=chat.a;chat.b", "&topic=chat.a&last_event_id=1;2", "&topic=%zz"} {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok+query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		var body struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		cancel()
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || body.Error != "bad_query" ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("query %q: %d %q (%s), want 400 bad_query in JSON", query, resp.StatusCode, body.Error, resp.Header.Get("Content-Type"))
		}
	}
}

// A stream replaced by a newer one of its user (beyond MaxConnsPerUser)
// ends with a herald.replaced event, after a retry: field of ten times
// Retry, on HTTP/1.1 (the writers) and on HTTP/2 (the handler goroutine).
func TestReplacedStreamIsTold(t *testing.T) {
	t.Parallel()
	h2 := new(http.Protocols)
	h2.SetUnencryptedHTTP2(true)
	for _, tc := range []struct {
		name   string
		client *http.Client
		proto  int
	}{
		{"HTTP/1.1", http.DefaultClient, 1},
		{"HTTP/2", &http.Client{Transport: &http.Transport{Protocols: h2, TLSClientConfig: &tls.Config{}}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEdge(t, sseedge.Config{MaxConnsPerUser: 1, Retry: 1500 * time.Millisecond})
			tok := tokenFor(t, "tabs-"+tc.name, time.Hour)
			open := func() *http.Response {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
				resp, err := tc.client.Do(req)
				if err != nil {
					cancel()
					t.Fatal(err)
				}
				t.Cleanup(func() { cancel(); resp.Body.Close() })
				if resp.StatusCode != http.StatusOK || resp.ProtoMajor != tc.proto {
					t.Fatalf("open: %s %s", resp.Proto, resp.Status)
				}
				return resp
			}
			first := open()
			dec := sseedge.NewDecoder(first.Body)
			// The first stream's opening id, so that the second is newer.
			if _, err := dec.Next(); err != nil {
				t.Fatal(err)
			}
			open()
			var (
				retry  time.Duration
				cursor string
			)
			for {
				ev, err := dec.Next()
				if err != nil {
					t.Fatalf("stream ended without %s: %v", sseedge.ReplacedEvent, err)
				}
				if ev.Retry > 0 {
					retry = ev.Retry
					continue
				}
				if ev.Event != sseedge.ReplacedEvent {
					cursor = dec.LastEventID()
					continue
				}
				if ev.Data != `{"reason":"replaced"}` {
					t.Errorf("data %q", ev.Data)
				}
				if cursor != "" && dec.LastEventID() != cursor {
					t.Errorf("the replaced event moved the cursor from %q to %q", cursor, dec.LastEventID())
				}
				break
			}
			// Counted before the client is told: a client that saw the
			// event finds it in the metrics.
			if n := e.closed(sseedge.CloseReplaced); n != 1 {
				t.Errorf("replaced = %v once the client was told, want 1", n)
			}
			if retry != 15*time.Second {
				t.Errorf("retry before %s: %v, want 10 × Retry = 15s", sseedge.ReplacedEvent, retry)
			}
			streamEnds(t, first, 5*time.Second)
		})
	}
}

// A stream refused because the edge cannot reach Redis gets a Retry-After,
// like the other 503s.
func TestBrokerUnavailableRetryAfter(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	e := newTestEdgeOn(t, rdb, "p:", sseedge.Config{BrokerGrace: time.Minute, Retry: 2 * time.Second})
	srv.Stop()
	resp, err := http.Get(e.url + "/v1/events?access_token=" + tokenFor(t, "nobroker", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || body.Error != "broker_unavailable" {
		t.Fatalf("%d %q, want 503 broker_unavailable", resp.StatusCode, body.Error)
	}
	if got := resp.Header.Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After %q, want 3 (Retry + 1s, as edge_full)", got)
	}
}
