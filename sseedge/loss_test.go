package sseedge_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// lossClient is what readStream read.
type lossClient struct {
	events []sseedge.Event
	cursor string // the Last-Event-ID it would send next
}

// readStream opens a stream for tok from Last-Event-ID lastID, calls
// during (if not nil) once the stream is set up, and reads until it has
// want events, or with want 0 until the edge has sent the stream's first
// id; then it hangs up.
func readStream(t *testing.T, e *testEdge, tok, query, lastID string, want int, during func()) lossClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok+query, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if during != nil {
		// The edge sets a stream up before it answers.
		during()
	}
	var c lossClient
	if want == 0 {
		// The first bytes are a retry: field, then the cursor alone.
		var wire []byte
		buf := make([]byte, 512)
		for !bytes.Contains(wire, []byte("\n\nid: ")) || !bytes.HasSuffix(wire, []byte("\n\n")) {
			n, err := resp.Body.Read(buf)
			wire = append(wire, buf[:n]...)
			if err != nil {
				t.Fatalf("read: %v after %q", err, wire)
			}
		}
		dec := sseedge.NewDecoder(bytes.NewReader(wire))
		for {
			ev, err := dec.Next()
			if err != nil {
				break
			}
			if ev.Data != "" {
				c.events = append(c.events, ev)
			}
		}
		c.cursor = dec.LastEventID()
		return c
	}
	dec := sseedge.NewDecoder(resp.Body)
	for len(c.events) < want {
		ev, err := dec.Next()
		if err != nil {
			t.Fatalf("after %d events %+v: %v", len(c.events), c.events, err)
		}
		if ev.Data != "" {
			c.events = append(c.events, ev)
		}
	}
	c.cursor = dec.LastEventID()
	return c
}

// kinds lists events as "herald.reset" or their data.
func kinds(evs []sseedge.Event) string {
	var out []string
	for _, ev := range evs {
		if ev.Event == sseedge.ResetEvent {
			out = append(out, ev.Event)
		} else {
			out = append(out, ev.Data)
		}
	}
	return strings.Join(out, ",")
}

// A Redis that restarts without its data (no append-only file, no
// snapshot) loses the history that clients' Last-Event-IDs point into. A
// client that reconnects with such a cursor gets herald.reset, positioned
// at the newest event, then live events: whether its cursor was at an event
// or at the start of a stream that had none, and whether anything was
// published since the restart.
func TestRedisLostHistoryResets(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedisServer(t) // --save '' --appendonly no
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	e := newTestEdgeOn(t, rdb, "p:", sseedge.Config{})

	cases := []struct {
		user      string
		fromStart bool // the client hung up before any event: its cursor is the stream's start
		after     bool // an event is published after the restart
	}{
		{user: "ann"},
		{user: "bob", after: true},
		{user: "cat", fromStart: true},
		{user: "dov", fromStart: true, after: true},
	}
	cursors := map[string]string{}
	for _, tc := range cases {
		tok := tokenFor(t, tc.user, time.Hour)
		if tc.fromStart {
			cursors[tc.user] = readStream(t, e, tok, "", "", 0, nil).cursor
			publishTo(t, e, tc.user, "missed")
			continue
		}
		c := readStream(t, e, tok, "", "", 2, func() {
			publishTo(t, e, tc.user, "one")
			publishTo(t, e, tc.user, "two")
		})
		if got := kinds(c.events); got != "one,two" {
			t.Fatalf("%s before the restart: %s, want one,two", tc.user, got)
		}
		cursors[tc.user] = c.cursor
		publishTo(t, e, tc.user, "missed")
	}

	srv.Restart()
	testenv.WaitFor(t, 10*time.Second, "the edge to relink to Redis", func() bool {
		return rdb.Ping(context.Background()).Err() == nil && e.metric("herald_sse_redis_links") == 1
	})
	for _, tc := range cases {
		// The reset puts the client at the newest event: its re-fetch
		// covers what came before. Live events follow.
		var after string
		if tc.after {
			after = publishTo(t, e, tc.user, "after")
		}
		c := readStream(t, e, tokenFor(t, tc.user, time.Hour), "", cursors[tc.user], 2, func() { publishTo(t, e, tc.user, "live") })
		if got := kinds(c.events); got != "herald.reset,live" {
			t.Errorf("%s (cursor %s) after the restart: %s, want herald.reset,live", tc.user, cursors[tc.user], got)
		}
		if tc.after && c.events[0].ID != after {
			t.Errorf("%s: reset to %s, want the newest event %s", tc.user, c.events[0].ID, after)
		}
	}
}

// Without a loss, a reconnecting client gets what it missed and no reset:
// from an event, from the start of a stream that had no event, and in a
// stream that still has none.
func TestReconnectWithoutLossNoReset(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	ann, bob, cat := freshUser("ann"), freshUser("bob"), freshUser("cat")

	c := readStream(t, e, tokenFor(t, ann, time.Hour), "", "", 1, func() { publishTo(t, e, ann, "one") })
	publishTo(t, e, ann, "two")
	if got := kinds(readStream(t, e, tokenFor(t, ann, time.Hour), "", c.cursor, 1, nil).events); got != "two" {
		t.Errorf("from an event: %s, want two", got)
	}

	start := readStream(t, e, tokenFor(t, bob, time.Hour), "", "", 0, nil).cursor
	publishTo(t, e, bob, "first")
	if got := kinds(readStream(t, e, tokenFor(t, bob, time.Hour), "", start, 1, nil).events); got != "first" {
		t.Errorf("from the start of a stream with no event: %s, want first", got)
	}

	tok, _ := sseedge.IssueToken(secret, cat, time.Hour, time.Now(), "quiet")
	start = readStream(t, e, tok, "&topic=quiet", "", 0, nil).cursor
	again := readStream(t, e, tok, "&topic=quiet", start, 0, nil)
	if len(again.events) != 0 || again.cursor != start {
		t.Errorf("in streams with no event: %s, cursor %s then %s; want nothing, and the cursor unchanged", kinds(again.events), start, again.cursor)
	}
	publishTo(t, e, cat, "live")
	if got := kinds(readStream(t, e, tok, "&topic=quiet", again.cursor, 1, nil).events); got != "live" {
		t.Errorf("after reconnecting in streams with no event: %s, want live", got)
	}
}
