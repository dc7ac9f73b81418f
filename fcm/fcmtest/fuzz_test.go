package fcmtest_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// FuzzSend posts arbitrary bodies to messages:send: each is either accepted
// and counted, or refused as FCM refuses a bad request, never anything else.
func FuzzSend(f *testing.F) {
	for _, seed := range []string{
		`{"message":{"token":"t","data":{"a":"b"}}}`,
		`{"validate_only":true,"message":{"topic":"news"}}`,
		`{"message":{"token":"t","android":{"ttl":"3.5s","priority":"high"}}}`,
		`{"message":{"token":"t","android":{"ttl":"3.5"}}}`,
		`{"message":{"condition":"'a' in topics","notification":{"title":"x"}}}`,
		`{"message":{"token":"t","data":{"n":1}}}`,
		`{"message":null}`,
		`[]`,
		``,
	} {
		f.Add(seed)
	}
	s, err := fcmtest.New(fcmtest.Config{})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		before := s.Stats()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/projects/p/messages:send", strings.NewReader(body)))
		after := s.Stats()
		passed := after.Accepted + after.Validated - (before.Accepted + before.Validated)
		switch rec.Code {
		case http.StatusOK:
			if name := decode[map[string]string](t, rec.Body.Bytes())["name"]; !strings.HasPrefix(name, "projects/p/messages/") || passed != 1 {
				t.Errorf("accepted with name %q, counted %d", name, passed)
			}
		case http.StatusBadRequest:
			e := decode[googleError](t, rec.Body.Bytes())
			if e.Error.Status != "INVALID_ARGUMENT" || e.fcmErrorCode() != "INVALID_ARGUMENT" || passed != 0 {
				t.Errorf("refused with %s, counted %d", rec.Body, passed)
			}
		default:
			t.Errorf("status %d: %s", rec.Code, rec.Body)
		}
	})
}
