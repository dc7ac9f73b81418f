package fcmtest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"go.uber.org/goleak"

	"github.com/herald-push/herald/fcm/fcmtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const project = "herald-test"

// newTestEmulator starts an emulator with cfg and returns it with a real
// firebase-admin-go client pointed at it.
func newTestEmulator(tb testing.TB, cfg fcmtest.Config) (*fcmtest.Server, *messaging.Client) {
	tb.Helper()
	s := fcmtest.NewServer(tb, cfg)
	c, err := fcmtest.NewClient(context.Background(), s.Endpoint(), project)
	if err != nil {
		tb.Fatal(err)
	}
	return s, c
}

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// googleError is an FCM error body, decoded.
type googleError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			ErrorCode       string `json:"errorCode"`
			FieldViolations []struct {
				Field       string `json:"field"`
				Description string `json:"description"`
			} `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

// fcmErrorCode is the errorCode of the body's FcmError detail.
func (e googleError) fcmErrorCode() string {
	for _, d := range e.Error.Details {
		if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			return d.ErrorCode
		}
	}
	return ""
}

// do sends an HTTP request with body (none when empty) and returns the
// response with its body read.
func do(tb testing.TB, method, url, body string) (*http.Response, []byte) {
	tb.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, b
}

// decode unmarshals b into a new T, failing the test if it cannot.
func decode[T any](tb testing.TB, b []byte) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		tb.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// sendURL is the messages:send URL of s for project.
func sendURL(s *fcmtest.Server) string {
	return s.Endpoint() + "/projects/" + project + "/messages:send"
}
