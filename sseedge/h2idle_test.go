package sseedge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

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
