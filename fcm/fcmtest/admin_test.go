package fcmtest_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// faultState is GET /emulator/faults, decoded.
type faultState struct {
	Faults []struct {
		ID         int    `json:"id"`
		Token      string `json:"token"`
		Code       string `json:"code"`
		Count      int    `json:"count"`
		RetryAfter string `json:"retry_after"`
		Expires    string `json:"expires"`
	} `json:"faults"`
	Latency string  `json:"latency"`
	Jitter  string  `json:"jitter"`
	Rate    float64 `json:"rate"`
	Burst   int     `json:"burst"`
}

func TestHTTPFaults(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	url := s.URL() + "/emulator/faults"
	ctx := context.Background()

	// A single fault object.
	resp, b := do(t, http.MethodPost, url, `{"token":"gone","code":"UNREGISTERED"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST fault: %d %s", resp.StatusCode, b)
	}
	st := decode[faultState](t, b)
	if len(st.Faults) != 1 || st.Faults[0].Token != "gone" || st.Faults[0].Code != "UNREGISTERED" || st.Faults[0].ID == 0 {
		t.Fatalf("state %s", b)
	}
	id := st.Faults[0].ID
	if _, err := c.Send(ctx, &messaging.Message{Token: "gone"}); !messaging.IsUnregistered(err) {
		t.Errorf("send to the token: %v", err)
	}

	// Several changes at once.
	resp, b = do(t, http.MethodPost, url, `{"faults":[{"code":"UNAVAILABLE","count":1,"retry_after":"5m"},
		{"code":"INTERNAL","duration":"1h"}],"latency":"5ms","jitter":"1ms","rate":1000,"burst":50}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
	st = decode[faultState](t, b)
	if len(st.Faults) != 3 || st.Faults[1].RetryAfter != "5m0s" || st.Faults[1].Count != 1 || st.Faults[2].Expires == "" ||
		st.Latency != "5ms" || st.Jitter != "1ms" || st.Rate != 1000 || st.Burst != 50 {
		t.Errorf("state %s", b)
	}
	_, err := c.Send(ctx, &messaging.Message{Token: "device-1"})
	if !messaging.IsUnavailable(err) || errorutils.HTTPResponse(err).Header.Get("Retry-After") != "300" {
		t.Errorf("first send: %v", err)
	}
	if _, err := c.Send(ctx, &messaging.Message{Token: "device-1"}); !messaging.IsInternal(err) {
		t.Errorf("second send: %v", err)
	}
	if base, jitter := s.Latency(); base != 5*time.Millisecond || jitter != time.Millisecond {
		t.Errorf("latency %v ± %v", base, jitter)
	}

	// A bad update changes nothing.
	for _, body := range []string{
		`{"token":"x","code":"NOPE"}`,
		`{"faults":[{"code":"INTERNAL","count":-1}]}`,
		`{"faults":[{"code":"INTERNAL","duration":"soon"}]}`,
		`{"faults":[{"code":"INTERNAL","colour":"red"}]}`,
		`{"latency":"fast"}`,
		`{"latency":"-1s"}`,
		`{"rate":-1}`,
		`{"speed":1}`,
		`nonsense`,
	} {
		resp, b := do(t, http.MethodPost, url, body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"error"`) {
			t.Errorf("POST %s: %d %s", body, resp.StatusCode, b)
		}
	}
	resp, b = do(t, http.MethodGet, url, "")
	if st := decode[faultState](t, b); resp.StatusCode != 200 || len(st.Faults) != 2 || st.Latency != "5ms" {
		t.Errorf("after bad updates: %s", b)
	}

	// Remove one, then all.
	if resp, _ := do(t, http.MethodDelete, fmt.Sprintf("%s/%d", url, id), ""); resp.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE fault %d: %d", id, resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodDelete, fmt.Sprintf("%s/%d", url, id), ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE fault %d again: %d", id, resp.StatusCode)
	}
	resp, b = do(t, http.MethodDelete, url, "")
	if st := decode[faultState](t, b); resp.StatusCode != 200 || len(st.Faults) != 0 || st.Latency != "0s" || st.Rate != 0 {
		t.Errorf("DELETE faults: %d %s", resp.StatusCode, b)
	}
	if _, err := c.Send(ctx, &messaging.Message{Token: "gone"}); err != nil {
		t.Errorf("after DELETE: %v", err)
	}
}

func TestHTTPInspection(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, c := newTestEmulator(t, fcmtest.Config{Now: clock.Now})
	ctx := context.Background()
	for _, tok := range []string{"a", "b", "a"} {
		if _, err := c.Send(ctx, &messaging.Message{Token: tok, Data: map[string]string{"to": tok}}); err != nil {
			t.Fatal(err)
		}
	}
	s.FailNext(1, fcmtest.QuotaExceeded, 4*time.Second)
	_, _ = c.Send(ctx, &messaging.Message{Token: "b"})
	s.MismatchSenderID("c")
	_, _ = c.Send(ctx, &messaging.Message{Token: "c"})

	_, b := do(t, http.MethodGet, s.URL()+"/emulator/messages", "")
	if all := decode[[]fcmtest.Message](t, b); len(all) != 3 || all[0].Token != "a" || all[1].Data["to"] != "b" {
		t.Errorf("messages %s", b)
	}
	_, b = do(t, http.MethodGet, s.URL()+"/emulator/messages?token=a", "")
	msgs := decode[[]fcmtest.Message](t, b)
	if len(msgs) != 2 || msgs[0].Token != "a" || msgs[1].Token != "a" || msgs[0].Name == msgs[1].Name ||
		!msgs[0].Received.Equal(clock.Now()) || !strings.Contains(string(msgs[0].Raw), `"token":"a"`) {
		t.Errorf("messages to a: %s", b)
	}

	_, b = do(t, http.MethodGet, s.URL()+"/emulator/stats", "")
	st := decode[fcmtest.Stats](t, b)
	if st.Requests != 5 || st.Accepted != 3 || st.Errors[fcmtest.QuotaExceeded] != 1 ||
		st.Errors[fcmtest.SenderIDMismatch] != 1 || len(st.Throttled) != 1 || !st.Throttled[0].Equal(clock.Now()) {
		t.Errorf("stats %s", b)
	}

	_, b = do(t, http.MethodGet, s.URL()+"/emulator/attempts?token=b", "")
	att := decode[[]struct {
		Status     int    `json:"status"`
		Code       string `json:"code"`
		RetryAfter int    `json:"retry_after_seconds"`
		Name       string `json:"name"`
	}](t, b)
	if len(att) != 2 || att[0].Status != 200 || att[0].Name == "" || att[1].Status != 429 ||
		att[1].Code != "QUOTA_EXCEEDED" || att[1].RetryAfter != 4 {
		t.Errorf("attempts to b: %s", b)
	}

	if resp, _ := do(t, http.MethodDelete, s.URL()+"/emulator/messages", ""); resp.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE messages: %d", resp.StatusCode)
	}
	if _, b := do(t, http.MethodGet, s.URL()+"/emulator/messages", ""); strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("messages after DELETE: %s", b)
	}
	if s.Count() != 0 || s.Stats().Requests != 0 {
		t.Errorf("after DELETE: count %d, stats %+v", s.Count(), s.Stats())
	}
}

func TestUnknownPaths(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	for _, path := range []string{"/v1/projects/p/messages:sendAll", "/v1/projects/p", "/v1"} {
		resp, b := do(t, http.MethodPost, s.URL()+path, `{}`)
		if e := decode[googleError](t, b); resp.StatusCode != 404 || e.Error.Status != "NOT_FOUND" {
			t.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
		}
	}
	// Google's front end answers a method a path does not have with 404.
	if resp, _ := do(t, http.MethodGet, sendURL(s), ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET messages:send: %d", resp.StatusCode)
	}
}
