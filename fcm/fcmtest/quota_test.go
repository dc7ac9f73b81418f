package fcmtest_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// TestQuotaPerMinute: a project quota of 600 a minute lets 10 sends through
// at once (one second's worth) and refuses the rest with 429
// QUOTA_EXCEEDED and a Retry-After, until the clock moves.
func TestQuotaPerMinute(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, c := newTestEmulator(t, fcmtest.Config{QuotaPerMinute: 600, Now: clock.Now})
	if rate, burst := s.RateLimit(); rate != 10 || burst != 0 {
		t.Fatalf("rate limit %v/s burst %d, want 10/s and the default burst", rate, burst)
	}
	ctx := context.Background()
	send := func(n int) (ok, refused int) {
		for i := range n {
			_, err := c.Send(ctx, &messaging.Message{Token: "tok-" + strconv.Itoa(i)})
			switch {
			case err == nil:
				ok++
			case messaging.IsQuotaExceeded(err):
				refused++
			default:
				t.Fatalf("send: %v", err)
			}
		}
		return ok, refused
	}
	if ok, refused := send(15); ok != 10 || refused != 5 {
		t.Fatalf("%d accepted, %d refused; want 10 and 5", ok, refused)
	}
	if got := s.Stats().Errors[fcmtest.QuotaExceeded]; got != 5 {
		t.Fatalf("stats count %d QUOTA_EXCEEDED, want 5", got)
	}
	for _, a := range s.Attempts("") {
		if a.Status == http.StatusTooManyRequests && a.RetryAfter <= 0 {
			t.Fatalf("a 429 without a Retry-After: %+v", a)
		}
	}
	clock.Advance(500 * time.Millisecond)
	if ok, refused := send(6); ok != 5 || refused != 1 {
		t.Fatalf("half a second later: %d accepted, %d refused; want 5 and 1", ok, refused)
	}
}

// TestServesH2C: the emulator answers HTTP/2 without TLS (prior
// knowledge), as FCM answers HTTP/2, and HTTP/1.1 still.
func TestServesH2C(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	body := `{"message":{"token":"tok-h2c"}}`
	for _, h2c := range []bool{true, false} {
		tr := &http.Transport{}
		want := "HTTP/1.1"
		if h2c {
			tr.Protocols = new(http.Protocols)
			tr.Protocols.SetUnencryptedHTTP2(true)
			want = "HTTP/2.0"
		}
		resp, err := (&http.Client{Transport: tr}).Post(s.Endpoint()+"/projects/"+project+"/messages:send",
			"application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != http.StatusOK || resp.Proto != want {
			t.Fatalf("h2c %v: %s %s, want 200 over %s", h2c, resp.Proto, resp.Status, want)
		}
	}
	if n := len(s.ByToken("tok-h2c")); n != 2 {
		t.Fatalf("%d messages recorded, want 2", n)
	}
}
