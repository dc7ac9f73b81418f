package integration_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

const waitEvent = 5 * time.Second

// A user with one connection on each of two edges gets every notification
// exactly once on each connection, in order.
func TestMultiDevice(t *testing.T) {
	s := newSystem(t, 2, 5*time.Second)
	tok := token(t, "alice")
	phone := connect(t, s.edges[0].url, tok)
	laptop := connect(t, s.edges[1].url, tok)
	tab := connect(t, s.edges[1].url, tok) // a second tab on the same edge

	const n = 20
	var ids []string
	for i := range n {
		resp := s.notify(t, &heraldv1.NotifyRequest{UserId: "alice", Event: "holdings", Data: []byte(strconv.Itoa(i))})
		if resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
			t.Fatalf("notification %d: route %v, want online", i, resp.GetRoute())
		}
		// One subscriber per edge, however many connections it holds.
		if resp.GetSubscribers() != 2 {
			t.Fatalf("notification %d reached %d edge subscribers, want 2", i, resp.GetSubscribers())
		}
		ids = append(ids, resp.GetEventId())
	}
	marker := s.notify(t, &heraldv1.NotifyRequest{UserId: "alice", Event: "marker"}).GetEventId()

	for name, c := range map[string]*sseClient{"phone": phone, "laptop": laptop, "tab": tab} {
		for i, id := range ids {
			ev := c.next(t, waitEvent)
			if ev.ID != id || ev.Event != "holdings" || ev.Data != strconv.Itoa(i) {
				t.Fatalf("%s: event %d = %+v, want id %s data %d", name, i, ev, id, i)
			}
		}
		// Nothing duplicated: the next event is the marker.
		if ev := c.next(t, waitEvent); ev.ID != marker {
			t.Fatalf("%s: after %d events got %+v, want the marker %s", name, n, ev, marker)
		}
	}
}

// A user with no connection gets the offline route; one who closed cleanly
// is offline at once.
func TestOfflineUser(t *testing.T) {
	s := newSystem(t, 1, 30*time.Second)
	resp := s.notify(t, &heraldv1.NotifyRequest{UserId: "bob", Data: []byte("x")})
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || resp.GetStalePresence() || resp.GetSubscribers() != 0 {
		t.Fatalf("never-connected user: %v, want offline", resp)
	}

	c := connect(t, s.edges[0].url, token(t, "bob"))
	if resp := s.notify(t, &heraldv1.NotifyRequest{UserId: "bob"}); resp.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("connected user: %v, want online", resp)
	}
	c.close()
	// A clean close removes the lease without waiting for the 30s TTL.
	testenv.WaitFor(t, 5*time.Second, "bob's lease to be removed", func() bool {
		n, err := s.reg.Online(context.Background(), "bob")
		return err == nil && n["bob"] == 0
	})
	resp = s.notify(t, &heraldv1.NotifyRequest{UserId: "bob"})
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || resp.GetStalePresence() {
		t.Fatalf("after clean close: %v, want offline without stale presence", resp)
	}
}

// A user whose only edge was killed (no clean close) is routed offline at
// once through the stale-presence check, and stops counting as online within
// the lease TTL.
func TestDeadEdge(t *testing.T) {
	s := newSystem(t, 0, time.Second)
	// The checks need the dead edge's lease to be live, on Redis' clock, when
	// the router reads it. On a loaded machine the steps can outlast a short
	// lease: the case then runs again with a longer one, so that every check
	// is made.
	for ttl := time.Second; !s.deadEdge(t, "carol-"+ttl.String(), ttl); ttl *= 2 {
		if ttl >= 8*time.Second {
			t.Fatalf("the steps outlasted every lease up to %v", ttl)
		}
	}
}

// deadEdge connects user to a child edge whose leases last ttl, kills the
// edge, and checks the routes before the kill, right after it, and once the
// lease has expired. It reports false, before making the checks that need the
// lease live, when the lease had run out by then.
func (s *system) deadEdge(t *testing.T, user string, ttl time.Duration) bool {
	ctx := context.Background()
	url, proc := s.startChildEdge(t, ttl)
	// The lease is taken after this, so it is live until at least leased:
	// lease deadlines are whole milliseconds of Redis' clock.
	leased := s.redisNow(t).Truncate(time.Millisecond).Add(ttl)
	connect(t, url, token(t, user))
	n, err := s.reg.Online(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	before := s.notify(t, &heraldv1.NotifyRequest{UserId: user})
	if !s.redisNow(t).Before(leased) {
		t.Logf("connecting outlasted a %v lease; again with a longer one", ttl)
		_ = proc.Process.Kill()
		return false
	}
	if n[user] != 1 {
		t.Fatalf("%s online = %d, want 1", user, n[user])
	}
	if before.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("before kill: %v, want online", before)
	}

	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	killed := s.redisNow(t)
	conns, err := s.reg.Conns(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) == 0 && !s.redisNow(t).Before(leased) {
		t.Logf("the kill outlasted a %v lease; again with a longer one", ttl)
		return false
	}
	if len(conns) != 1 {
		t.Fatalf("right after kill: leases %v, want one", conns)
	}
	// Nothing renews the lease after the kill.
	expires := conns[0].Expires
	if left := expires.Sub(killed); left > ttl {
		t.Fatalf("the lease expires %v after the kill, later than its TTL %v", left, ttl)
	}

	// The lease is still live, but no edge takes the publish.
	resp := s.notify(t, &heraldv1.NotifyRequest{UserId: user})
	if !s.redisNow(t).Before(expires) {
		t.Logf("the notification outlasted a %v lease; again with a longer one", ttl)
		return false
	}
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || !resp.GetStalePresence() {
		t.Fatalf("right after kill: %v, want offline with stale presence", resp)
	}
	// The expiry itself was checked above, on Redis' clock: this waits for
	// it, however slow the machine.
	testenv.WaitFor(t, ttl+10*time.Second, user+"'s lease to expire", func() bool {
		n, err := s.reg.Online(ctx, user)
		return err == nil && n[user] == 0
	})
	resp = s.notify(t, &heraldv1.NotifyRequest{UserId: user})
	if resp.GetRoute() != heraldv1.Route_ROUTE_OFFLINE || resp.GetStalePresence() {
		t.Fatalf("after the TTL: %v, want plain offline", resp)
	}
	return true
}

// redisNow is the time on Redis' clock, which lease deadlines use.
func (s *system) redisNow(tb testing.TB) time.Time {
	tb.Helper()
	now, err := s.rdb.Time(context.Background()).Result()
	if err != nil {
		tb.Fatal(err)
	}
	return now
}

// Newlines and CRs in data never create a field or an event on the wire;
// in event names they are refused.
func TestInjection(t *testing.T) {
	s := newSystem(t, 1, 5*time.Second)
	tok := token(t, "dave")
	resp, cancel := get(t, s.edges[0].url+"/v1/events?access_token="+tok, nil)
	defer cancel()
	defer resp.Body.Close()
	stop := time.AfterFunc(10*time.Second, cancel) // bounds the raw reads below
	defer stop.Stop()

	hostile := "line1\n\nid: 999\nevent: admin\ndata: pwned\r\rretry: 1\r\n\r\nlast"
	sent := s.notify(t, &heraldv1.NotifyRequest{UserId: "dave", Event: "update", Data: []byte(hostile)})
	for _, ev := range []string{"a\nb", "a\rb", "update\r\ndata: x"} {
		_, err := s.router.Notify(context.Background(), &heraldv1.NotifyRequest{UserId: "dave", Event: ev})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("event %q: %v, want InvalidArgument", ev, err)
		}
	}
	marker := s.notify(t, &heraldv1.NotifyRequest{UserId: "dave", Event: "marker"})

	// Read the raw wire up to the marker.
	var wire strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(wire.String(), "id: "+marker.GetEventId()) {
		n, err := resp.Body.Read(buf)
		wire.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v (so far %q)", err, wire.String())
		}
	}
	raw := wire.String()
	start := strings.Index(raw, "id: "+sent.GetEventId())
	end := strings.Index(raw, "id: "+marker.GetEventId())
	if start < 0 || end < start {
		t.Fatalf("wire %q lacks the events in order", raw)
	}
	frame := raw[start:end]
	want := "id: " + sent.GetEventId() + "\nevent: update\n" +
		"data: line1\ndata: \ndata: id: 999\ndata: event: admin\ndata: data: pwned\ndata: \ndata: retry: 1\ndata: \ndata: last\n\n"
	if frame != want {
		t.Fatalf("frame on the wire:\n%q\nwant:\n%q", frame, want)
	}
}

// Missing, malformed, forged, expired and wrong-algorithm tokens get 401
// with a JSON body; alice's token never yields bob's events.
func TestAuthentication(t *testing.T) {
	s := newSystem(t, 1, 5*time.Second)
	now := time.Now()
	sign := func(method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	valid := jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()}
	cases := map[string]string{
		"missing":      "",
		"malformed":    "not.a.jwt",
		"wrong secret": sign(jwt.SigningMethodHS256, []byte("another-secret"), valid),
		"expired":      sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": now.Add(-time.Minute).Unix()}),
		"no exp":       sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice"}),
		"not yet valid": sign(jwt.SigningMethodHS256, testSecret,
			jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix()}),
		"alg none":        sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid),
		"alg HS512":       sign(jwt.SigningMethodHS512, testSecret, valid),
		"no subject":      sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"exp": now.Add(time.Hour).Unix()}),
		"subject with LF": sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "a\nb", "exp": now.Add(time.Hour).Unix()}),
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			for _, via := range []string{"query", "header"} {
				url, h := s.edges[0].url+"/v1/events", http.Header{}
				if via == "query" {
					url += "?access_token=" + tok
				} else if tok != "" {
					h.Set("Authorization", "Bearer "+tok)
				}
				resp, cancel := get(t, url, h)
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("via %s: status %s, want 401", via, resp.Status)
				}
				var e struct{ Error, Message string }
				if err := json.Unmarshal(body, &e); err != nil || e.Error != "unauthorized" || e.Message == "" {
					t.Fatalf("via %s: body %q, want a JSON error", via, body)
				}
			}
		})
	}

	// A valid token in the Authorization header works too.
	resp, cancel := get(t, s.edges[0].url+"/v1/events", http.Header{"Authorization": {"Bearer " + token(t, "alice")}})
	resp.Body.Close()
	cancel()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("header token: %s, want 200", resp.Status)
	}

	// Alice's stream never carries bob's events, even with bob connected.
	alice := connect(t, s.edges[0].url, token(t, "alice"))
	connect(t, s.edges[0].url, token(t, "bob"))
	if r := s.notify(t, &heraldv1.NotifyRequest{UserId: "bob", Data: []byte("for bob")}); r.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("bob: %v, want online", r)
	}
	mine := s.notify(t, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("for alice")})
	if ev := alice.next(t, waitEvent); ev.ID != mine.GetEventId() || ev.Data != "for alice" {
		t.Fatalf("alice got %+v, want only her own event %s", ev, mine.GetEventId())
	}
}

// Invalid Notify input gets InvalidArgument and nothing reaches the client.
func TestInvalidNotifyPublishesNothing(t *testing.T) {
	s := newSystem(t, 1, 5*time.Second)
	c := connect(t, s.edges[0].url, token(t, "erin"))
	for _, req := range []*heraldv1.NotifyRequest{
		{UserId: "erin", Data: []byte{0xc3, 0x28}},
		{UserId: "erin", Data: make([]byte, 64<<10+1)},
		{UserId: "erin", Event: "x\x7f"},
	} {
		if _, err := s.router.Notify(context.Background(), req); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Notify: %v, want InvalidArgument", err)
		}
	}
	ok := s.notify(t, &heraldv1.NotifyRequest{UserId: "erin", Data: []byte("valid")})
	if ev := c.next(t, waitEvent); ev.ID != ok.GetEventId() {
		t.Fatalf("first event %+v, want the valid one %s", ev, ok.GetEventId())
	}
}

// An edge that shuts down closes its streams and removes their presence.
func TestEdgeDrain(t *testing.T) {
	s := newSystem(t, 2, 30*time.Second)
	c := connect(t, s.edges[0].url, token(t, "frank"))
	if err := s.edges[0].Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.closed:
		if err != io.EOF {
			t.Fatalf("stream ended with %v, want a clean EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after the edge drained")
	}
	if n, _ := s.reg.Online(context.Background(), "frank"); n["frank"] != 0 {
		t.Fatalf("frank still online after drain: %d", n["frank"])
	}
	// The client reconnects to the other edge and is reachable again.
	c = connect(t, s.edges[1].url, token(t, "frank"))
	sent := s.notify(t, &heraldv1.NotifyRequest{UserId: "frank"})
	if ev := c.next(t, waitEvent); ev.ID != sent.GetEventId() {
		t.Fatalf("after reconnect got %+v, want %s", ev, sent.GetEventId())
	}
}
