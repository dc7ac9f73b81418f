package fcmtest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// classifiers are the SDK's helpers that a sender branches on.
var classifiers = map[string]func(error) bool{
	"IsUnregistered":        messaging.IsUnregistered,
	"IsInvalidArgument":     messaging.IsInvalidArgument,
	"IsSenderIDMismatch":    messaging.IsSenderIDMismatch,
	"IsQuotaExceeded":       messaging.IsQuotaExceeded,
	"IsUnavailable":         messaging.IsUnavailable,
	"IsInternal":            messaging.IsInternal,
	"IsThirdPartyAuthError": messaging.IsThirdPartyAuthError,
}

func TestErrorsAreClassifiedByTheSDK(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		fault      func(s *fcmtest.Server, token string)
		classifier string
		platform   func(error) bool // errorutils' view of error.status
		status     int
		retryAfter string
	}{
		{"unregistered", func(s *fcmtest.Server, tok string) { s.Unregister(tok) },
			"IsUnregistered", errorutils.IsNotFound, 404, ""},
		{"invalid token", func(s *fcmtest.Server, tok string) { s.InvalidToken(tok) },
			"IsInvalidArgument", errorutils.IsInvalidArgument, 400, ""},
		{"sender id mismatch", func(s *fcmtest.Server, tok string) { s.MismatchSenderID(tok) },
			"IsSenderIDMismatch", errorutils.IsPermissionDenied, 403, ""},
		{"quota exceeded", func(s *fcmtest.Server, _ string) { s.FailNext(1, fcmtest.QuotaExceeded, 7*time.Second) },
			"IsQuotaExceeded", errorutils.IsResourceExhausted, 429, "7"},
		{"quota exceeded, default retry-after", func(s *fcmtest.Server, _ string) { s.FailNext(1, fcmtest.QuotaExceeded, 0) },
			"IsQuotaExceeded", errorutils.IsResourceExhausted, 429, "1"},
		// The SDK retries a 503 by itself unless its Retry-After is over
		// two minutes: this one is, so the first answer reaches the caller.
		{"unavailable", func(s *fcmtest.Server, _ string) { s.FailNext(1, fcmtest.Unavailable, 3*time.Minute) },
			"IsUnavailable", errorutils.IsUnavailable, 503, "180"},
		{"internal", func(s *fcmtest.Server, _ string) { s.FailNext(1, fcmtest.Internal, 0) },
			"IsInternal", errorutils.IsInternal, 500, ""},
		{"third-party auth", func(s *fcmtest.Server, tok string) {
			if _, err := s.AddFault(fcmtest.Fault{Token: tok, Code: fcmtest.ThirdPartyAuthError}); err != nil {
				t.Fatal(err)
			}
		}, "IsThirdPartyAuthError", errorutils.IsUnauthenticated, 401, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, c := newTestEmulator(t, fcmtest.Config{})
			tc.fault(s, "device-1")
			_, err := c.Send(context.Background(), &messaging.Message{Token: "device-1"})
			if err == nil {
				t.Fatal("send succeeded")
			}
			for name, is := range classifiers {
				if got, want := is(err), name == tc.classifier; got != want {
					t.Errorf("messaging.%s(%v) = %v, want %v", name, err, got, want)
				}
			}
			if !tc.platform(err) {
				t.Errorf("errorutils does not see the platform code of %v", err)
			}
			resp := errorutils.HTTPResponse(err)
			if resp == nil {
				t.Fatal("no HTTP response in the error")
			}
			if resp.StatusCode != tc.status || resp.Header.Get("Retry-After") != tc.retryAfter {
				t.Errorf("status %d, Retry-After %q; want %d, %q",
					resp.StatusCode, resp.Header.Get("Retry-After"), tc.status, tc.retryAfter)
			}
			if n := len(s.Attempts("device-1")); n != 1 {
				t.Errorf("%d attempts: the SDK retried", n)
			}
			if s.Count() != 0 {
				t.Error("a failed send was recorded")
			}
		})
	}
}

// The error body is byte for byte the shape FCM sends.
func TestErrorBodyShape(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	s.Unregister("gone")
	resp, b := do(t, http.MethodPost, sendURL(s), `{"message":{"token":"gone"}}`)
	want := `{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",` +
		`"details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}`
	var got, exp any
	_ = json.Unmarshal(b, &got)
	_ = json.Unmarshal([]byte(want), &exp)
	if resp.StatusCode != 404 || !reflect.DeepEqual(got, exp) {
		t.Errorf("status %d, body %s\nwant %s", resp.StatusCode, b, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=UTF-8" {
		t.Errorf("Content-Type %q", ct)
	}
}

func TestRetryAfterIsRoundedUp(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	s.FailNext(1, fcmtest.QuotaExceeded, 1500*time.Millisecond)
	_, err := c.Send(context.Background(), &messaging.Message{Token: "device-1"})
	if got := errorutils.HTTPResponse(err).Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q for 1.5s, want 2", got)
	}
	s.FailNext(1, fcmtest.QuotaExceeded, -1)
	_, err = c.Send(context.Background(), &messaging.Message{Token: "device-1"})
	if !messaging.IsQuotaExceeded(err) || errorutils.HTTPResponse(err).Header.Get("Retry-After") != "" {
		t.Errorf("a negative RetryAfter still sent a header: %v", err)
	}
}
