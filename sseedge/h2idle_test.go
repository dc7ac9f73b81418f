package sseedge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// An HTTP/2 stream that has nothing to write for longer than WriteTimeout
// stays open: the write deadline covers a write, not the quiet after it
// (net/http resets an HTTP/2 stream when its write deadline passes, even
// with no write waiting).
func TestH2QuietStreamOutlivesWriteTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{WriteTimeout: 200 * time.Millisecond, Heartbeat: time.Hour})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols, TLSClientConfig: &tls.Config{}}}
	const user = "quiet-h2"
	tok, _ := sseedge.IssueToken(secret, user, time.Hour, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("served %s %d", resp.Proto, resp.StatusCode)
	}
	// Five write timeouts of quiet, then an event.
	time.Sleep(5 * 200 * time.Millisecond)
	e.publish(t, user, []byte("after-quiet"))
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended during the quiet: %v (closed write_timeout: %v)", err, e.closed(sseedge.CloseWriteTimeout))
		}
		if strings.Contains(line, "after-quiet") {
			return
		}
	}
}

// openH2 opens a stream over HTTP/2 without TLS; cancelling ctx resets it.
func openH2(t *testing.T, ctx context.Context, e *testEdge, tok string) *bufio.Reader {
	t.Helper()
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("served %s %d", resp.Proto, resp.StatusCode)
	}
	return bufio.NewReader(resp.Body)
}

// A quiet HTTP/2 stream, served on its handler goroutine, gets its
// heartbeats from the edge's one ticker for such streams, and its events,
// and ends cleanly when its token expires (token_expired).
func TestH2HeldStreamHeartbeatsAndExpires(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{Heartbeat: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const user = "held-h2"
	// JWT exp has whole-second precision: the token lasts 2 to 3 s, long
	// enough for what comes before its end on a loaded machine.
	r := openH2(t, ctx, e, tokenFor(t, user, 3*time.Second))
	readUntil := func(want string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended waiting for %q: %v", want, err)
			}
			if strings.Contains(line, want) {
				return
			}
		}
	}
	readUntil(": hb")
	readUntil(": hb")
	e.publish(t, user, []byte("between-heartbeats"))
	readUntil("between-heartbeats")
	readUntil(": hb")
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatalf("stream ended with %v, want its end at the token's expiry", err)
	}
	waitClosed(t, e, sseedge.CloseTokenExpired, 1)
}

// A client that resets its HTTP/2 stream while it is quiet frees it at
// once: it is counted as client_closed and leaves no open stream.
func TestH2ClientResetClosesHeldStream(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{Heartbeat: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	streamCtx, reset := context.WithCancel(ctx)
	r := openH2(t, streamCtx, e, tokenFor(t, "reset-h2", time.Hour))
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	reset()
	waitClosed(t, e, sseedge.CloseClientClosed, 1)
	testenv.WaitFor(t, 5*time.Second, "no stream open", func() bool { return e.openConns() == 0 })
}
