package fcmtest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

func TestFailNextThenRecover(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	s.FailNext(2, fcmtest.Internal, 0)
	ctx := context.Background()
	for i := range 2 {
		if _, err := c.Send(ctx, &messaging.Message{Token: fmt.Sprint("t", i)}); !messaging.IsInternal(err) {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if f := s.Faults(); len(f) != 0 {
		t.Errorf("spent fault still listed: %+v", f)
	}
	if _, err := c.Send(ctx, &messaging.Message{Token: "t2"}); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Requests != 3 || st.Accepted != 1 || st.Errors[fcmtest.Internal] != 2 {
		t.Errorf("stats %+v", st)
	}
}

// A fault for every request comes before the body is read, as an outage
// does; a fault for a token comes after.
func TestFaultOrder(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	s.Unregister("gone")
	if resp, b := do(t, http.MethodPost, sendURL(s), `{"message":{"token":"gone","data":{"n":1}}}`); resp.StatusCode != 400 {
		t.Errorf("invalid body to an unregistered token: %d %s", resp.StatusCode, b)
	}
	s.FailNext(1, fcmtest.Unavailable, 0)
	if resp, b := do(t, http.MethodPost, sendURL(s), `not json`); resp.StatusCode != 503 {
		t.Errorf("invalid body during an outage: %d %s", resp.StatusCode, b)
	}
}

func TestFailForAPeriod(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, c := newTestEmulator(t, fcmtest.Config{Now: clock.Now})
	s.FailFor(10*time.Second, fcmtest.QuotaExceeded, 3*time.Second)
	ctx := context.Background()
	for range 3 {
		_, err := c.Send(ctx, &messaging.Message{Token: "device-1"})
		if !messaging.IsQuotaExceeded(err) || errorutils.HTTPResponse(err).Header.Get("Retry-After") != "3" {
			t.Fatalf("during the period: %v", err)
		}
		clock.Advance(3 * time.Second)
	}
	clock.Advance(time.Second) // 10s after FailFor
	if _, err := c.Send(ctx, &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatalf("after the period: %v", err)
	}
	if len(s.Faults()) != 0 {
		t.Errorf("expired fault listed: %+v", s.Faults())
	}
}

func TestRemoveFault(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	id := s.FailFor(time.Hour, fcmtest.Internal, 0)
	s.Unregister("gone")
	if f := s.Faults(); len(f) != 2 || f[0].ID != id || f[1].Token != "gone" || f[1].Code != fcmtest.Unregistered {
		t.Fatalf("faults %+v", f)
	}
	if !s.RemoveFault(id) || s.RemoveFault(id) {
		t.Error("RemoveFault did not remove exactly once")
	}
	if _, err := c.Send(context.Background(), &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatal(err)
	}
	s.ClearFaults()
	if _, err := c.Send(context.Background(), &messaging.Message{Token: "gone"}); err != nil {
		t.Fatalf("after ClearFaults: %v", err)
	}
	if _, err := s.AddFault(fcmtest.Fault{Code: "NOPE"}); err == nil {
		t.Error("AddFault took an unknown code")
	}
}

// The SDK retries a 503 itself, up to four times after 0s, 1s, 2s and 4s or
// the Retry-After if longer; it does not retry a 429 or a 500.
func TestSDKRetries(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	ctx := context.Background()
	s.FailNext(1, fcmtest.Unavailable, 0)
	if _, err := c.Send(ctx, &messaging.Message{Token: "retried"}); err != nil {
		t.Fatalf("the SDK did not retry a 503: %v", err)
	}
	att := s.Attempts("retried")
	if len(att) != 2 || att[0].Status != 503 || att[0].Code != fcmtest.Unavailable || att[1].Status != 200 || att[1].Name == "" {
		t.Errorf("attempts %+v", att)
	}
	// While it waits to retry (1s after the second 503), a deadline ends
	// the send with the bare context error: no SDK helper recognises it.
	id := s.FailFor(time.Hour, fcmtest.Unavailable, 0)
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err := c.Send(short, &messaging.Message{Token: "outage"})
	if !errors.Is(err, context.DeadlineExceeded) || messaging.IsUnavailable(err) {
		t.Errorf("503s until the deadline: %v", err)
	}
	if n := len(s.Attempts("outage")); n != 2 {
		t.Errorf("%d attempts before the deadline, want 2", n)
	}
	s.RemoveFault(id)
	for _, code := range []fcmtest.ErrorCode{fcmtest.QuotaExceeded, fcmtest.Internal} {
		tok := "once-" + string(code)
		s.FailNext(1, code, 0)
		if _, err := c.Send(ctx, &messaging.Message{Token: tok}); err == nil {
			t.Errorf("%s: the SDK retried", code)
		}
		if n := len(s.Attempts(tok)); n != 1 {
			t.Errorf("%s: %d attempts", code, n)
		}
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, c := newTestEmulator(t, fcmtest.Config{Rate: 10, Now: clock.Now})
	send := func(n int) (ok, throttled int) {
		t.Helper()
		msgs := make([]*messaging.Message, n)
		for i := range msgs {
			msgs[i] = &messaging.Message{Token: fmt.Sprint("t", i)}
		}
		br, err := c.SendEach(context.Background(), msgs)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range br.Responses {
			switch {
			case r.Success:
				ok++
			case messaging.IsQuotaExceeded(r.Error):
				throttled++
				if ra := errorutils.HTTPResponse(r.Error).Header.Get("Retry-After"); ra != "1" {
					t.Errorf("Retry-After %q", ra)
				}
			default:
				t.Errorf("unexpected error %v", r.Error)
			}
		}
		return ok, throttled
	}
	// The clock stands still: a burst of one second's worth passes.
	if ok, throttled := send(30); ok != 10 || throttled != 20 {
		t.Errorf("30 at once under 10/s: %d passed, %d throttled", ok, throttled)
	}
	clock.Advance(500 * time.Millisecond)
	if ok, throttled := send(8); ok != 5 || throttled != 3 {
		t.Errorf("8 after 0.5s: %d passed, %d throttled", ok, throttled)
	}
	st := s.Stats()
	if st.Errors[fcmtest.QuotaExceeded] != 23 || len(st.Throttled) != 23 || st.Accepted != 15 {
		t.Errorf("stats %+v", st)
	}
	s.SetRateLimit(0, 0)
	if ok, _ := send(20); ok != 20 {
		t.Errorf("without a limit: %d of 20 passed", ok)
	}
	s.SetRateLimit(1, 3)
	if ok, _ := send(5); ok != 3 {
		t.Errorf("burst 3: %d of 5 passed", ok)
	}
	s.ClearFaults() // back to the Config's 10/s
	if rate, burst := s.RateLimit(); rate != 10 || burst != 0 {
		t.Errorf("after ClearFaults: rate %v, burst %d", rate, burst)
	}
}

// A test can check from the attempts that a sender waited out the
// Retry-After. Here the sender is a loop that does, on a fake clock.
func TestAttemptsShowRetryAfterWasHonoured(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, c := newTestEmulator(t, fcmtest.Config{Now: clock.Now})
	s.FailNext(2, fcmtest.QuotaExceeded, 2*time.Second)
	msg := &messaging.Message{Token: "device-1"}
	for {
		_, err := c.Send(context.Background(), msg)
		if err == nil {
			break
		}
		if !messaging.IsQuotaExceeded(err) {
			t.Fatal(err)
		}
		secs, _ := strconv.Atoi(errorutils.HTTPResponse(err).Header.Get("Retry-After"))
		clock.Advance(time.Duration(secs) * time.Second)
	}
	att := s.Attempts("device-1")
	if len(att) != 3 {
		t.Fatalf("attempts %+v", att)
	}
	throttled := s.Stats().Throttled
	for i, a := range att[:2] {
		if a.Status != http.StatusTooManyRequests || a.RetryAfter != 2*time.Second || !throttled[i].Equal(a.Answered) {
			t.Errorf("attempt %d: %+v", i, a)
		}
		if wait := att[i+1].Received.Sub(a.Answered); wait < a.RetryAfter {
			t.Errorf("attempt %d came %v after the 429, before its Retry-After", i+1, wait)
		}
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{Latency: 100 * time.Millisecond})
	start := time.Now()
	if _, err := c.Send(context.Background(), &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("send took %v under 100ms of latency", took)
	}
	a := s.Attempts("device-1")[0]
	if gap := a.Answered.Sub(a.Received); gap < 100*time.Millisecond {
		t.Errorf("answered %v after it was received", gap)
	}

	// A client that gives up is not kept waiting.
	s.SetLatency(time.Minute, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := c.Send(ctx, &messaging.Message{Token: "device-2"}); err == nil {
		t.Fatal("send succeeded within its deadline")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("gave up after %v", took)
	}
	if base, jitter := s.Latency(); base != time.Minute || jitter != 0 {
		t.Errorf("latency %v ± %v", base, jitter)
	}
}
