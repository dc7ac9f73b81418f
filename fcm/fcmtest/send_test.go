package fcmtest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

func TestSendRecordsMessage(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	ttl := 3500 * time.Millisecond
	sent := &messaging.Message{
		Token:        "device-1",
		Data:         map[string]string{"event": "chat", "body": `{"msg":"hi"}`},
		Notification: &messaging.Notification{Title: "Hello", Body: "You have mail"},
		Android:      &messaging.AndroidConfig{TTL: &ttl, Priority: "high", CollapseKey: "chat"},
	}
	before := time.Now()
	name, err := c.Send(context.Background(), sent)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "projects/"+project+"/messages/") {
		t.Errorf("name %q", name)
	}
	got := s.ByToken("device-1")
	if len(got) != 1 || s.Count() != 1 {
		t.Fatalf("recorded %d (count %d), want 1", len(got), s.Count())
	}
	m := got[0]
	if m.Name != name || m.Project != project || m.Token != "device-1" || m.Topic != "" {
		t.Errorf("recorded %+v", m)
	}
	if m.Data["event"] != "chat" || m.Data["body"] != `{"msg":"hi"}` || len(m.Data) != 2 {
		t.Errorf("data %v", m.Data)
	}
	if m.Received.Before(before) || m.Received.After(time.Now()) {
		t.Errorf("received %v, not during the send", m.Received)
	}
	dec, err := m.Decode()
	if err != nil {
		t.Fatal(err)
	}
	if dec.Notification.Title != "Hello" || dec.Android.Priority != "high" || dec.Android.CollapseKey != "chat" ||
		dec.Android.TTL == nil || *dec.Android.TTL != ttl {
		t.Errorf("decoded %+v / %+v", dec.Notification, dec.Android)
	}
	if !strings.Contains(string(m.Raw), `"ttl":"3.500000000s"`) {
		t.Errorf("raw message %s lacks the ttl as sent", m.Raw)
	}
	if len(s.ByToken("device-2")) != 0 {
		t.Error("ByToken matched another token")
	}
}

func TestSendEachRecordsAll(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	const n = 500
	msgs := make([]*messaging.Message, n)
	for i := range msgs {
		msgs[i] = &messaging.Message{Token: fmt.Sprintf("tok-%03d", i), Data: map[string]string{"i": fmt.Sprint(i)}}
	}
	br, err := c.SendEach(context.Background(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	if br.SuccessCount != n || br.FailureCount != 0 {
		t.Fatalf("success %d, failure %d", br.SuccessCount, br.FailureCount)
	}
	if err := s.WaitFor(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	names := make(map[string]bool)
	for _, m := range s.Messages() {
		names[m.Name] = true
	}
	if len(names) != n {
		t.Errorf("%d distinct names, want %d", len(names), n)
	}
	for i, r := range br.Responses {
		got := s.ByToken(msgs[i].Token)
		if len(got) != 1 || got[0].Name != r.MessageID || got[0].Data["i"] != fmt.Sprint(i) {
			t.Fatalf("message %d: recorded %+v, answered %q", i, got, r.MessageID)
		}
	}
	if st := s.Stats(); st.Requests != n || st.Accepted != n || len(st.Errors) != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSendDryRunIsNotRecorded(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	name, err := c.SendDryRun(context.Background(), &messaging.Message{Token: "device-1"})
	if err != nil {
		t.Fatal(err)
	}
	if name != "projects/"+project+"/messages/fake_message_id" {
		t.Errorf("dry-run name %q", name)
	}
	if s.Count() != 0 || len(s.Messages()) != 0 {
		t.Errorf("dry run recorded: %v", s.Messages())
	}
	if st := s.Stats(); st.Validated != 1 || st.Accepted != 0 || st.Requests != 1 {
		t.Errorf("stats %+v", st)
	}
	// A dry run still meets the token's faults: it is how senders check tokens.
	s.Unregister("gone")
	if _, err := c.SendDryRun(context.Background(), &messaging.Message{Token: "gone"}); !messaging.IsUnregistered(err) {
		t.Errorf("dry run to an unregistered token: %v", err)
	}
}

func TestSendToTopicAndCondition(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	ctx := context.Background()
	if _, err := c.Send(ctx, &messaging.Message{Topic: "/topics/news"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, &messaging.Message{Condition: "'a' in topics"}); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 2 || msgs[0].Topic != "news" || msgs[1].Condition != "'a' in topics" || msgs[0].Token != "" {
		t.Errorf("recorded %+v", msgs)
	}
}

func TestSendToOtherProjectIsDenied(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{Project: project})
	other, err := fcmtest.NewClient(context.Background(), s.Endpoint(), "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Send(context.Background(), &messaging.Message{Token: "device-1"})
	if !errorutils.IsPermissionDenied(err) || messaging.IsSenderIDMismatch(err) {
		t.Errorf("send to another project: %v", err)
	}
	if !strings.Contains(err.Error(), "someone-else") {
		t.Errorf("message %q does not name the project", err)
	}
	own, err := fcmtest.NewClient(context.Background(), s.Endpoint(), project)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Send(context.Background(), &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Accepted != 1 || st.Errors[fcmtest.PermissionDenied] != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for i := range 3 {
			if _, err := c.Send(context.Background(), &messaging.Message{Token: fmt.Sprint("t", i)}); err != nil {
				t.Error(err)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitFor(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if s.Count() < 3 {
		t.Errorf("count %d after WaitFor(3)", s.Count())
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.WaitFor(short, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor(4) with 3 messages: %v", err)
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	s.Unregister("gone")
	ctx := context.Background()
	_, _ = c.Send(ctx, &messaging.Message{Token: "gone"})
	if _, err := c.Send(ctx, &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatal(err)
	}
	s.Reset()
	if s.Count() != 0 || len(s.Messages()) != 0 || len(s.Attempts("")) != 0 {
		t.Errorf("after Reset: count %d, messages %d, attempts %d", s.Count(), len(s.Messages()), len(s.Attempts("")))
	}
	if st := s.Stats(); st.Requests != 0 || len(st.Errors) != 0 {
		t.Errorf("stats after Reset %+v", st)
	}
	if _, err := c.Send(ctx, &messaging.Message{Token: "gone"}); !messaging.IsUnregistered(err) {
		t.Errorf("Reset removed a fault: %v", err)
	}
}

func TestMaxRecordsKeepsNewest(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{MaxRecords: 3})
	for i := range 10 {
		if _, err := c.Send(context.Background(), &messaging.Message{Token: fmt.Sprint("t", i)}); err != nil {
			t.Fatal(err)
		}
	}
	msgs := s.Messages()
	if len(msgs) != 3 || msgs[0].Token != "t7" || msgs[2].Token != "t9" {
		t.Errorf("kept %+v", msgs)
	}
	if s.Count() != 10 || len(s.Attempts("")) != 3 {
		t.Errorf("count %d, attempts %d", s.Count(), len(s.Attempts("")))
	}
}

func TestInvalidTokenFromTheSDK(t *testing.T) {
	t.Parallel()
	s, c := newTestEmulator(t, fcmtest.Config{})
	_, err := c.Send(context.Background(), &messaging.Message{Token: "not a token"})
	if !messaging.IsInvalidArgument(err) {
		t.Fatalf("got %v", err)
	}
	if err.Error() != "The registration token is not a valid FCM registration token" {
		t.Errorf("message %q", err)
	}
	if s.Count() != 0 {
		t.Error("an invalid send was recorded")
	}
}

// The SDK's deprecated SendAll posts a multipart batch to the endpoint
// itself. FCM has shut that API down, and so the emulator answers 404.
func TestBatchEndpointIsGone(t *testing.T) {
	t.Parallel()
	_, c := newTestEmulator(t, fcmtest.Config{})
	//lint:ignore SA1019 checking how the emulator answers the deprecated API
	_, err := c.SendAll(context.Background(), []*messaging.Message{{Token: "device-1"}})
	if !errorutils.IsNotFound(err) {
		t.Errorf("SendAll: %v", err)
	}
}

func TestInvalidRequestBodies(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	cases := []struct {
		name, body, field, message string
	}{
		{"not json", `{"message":`, "", "Invalid JSON payload"},
		{"array", `[1]`, "", "Invalid JSON payload"},
		{"no message", `{"validate_only":false}`, "message", "Message must be set"},
		{"message not an object", `{"message":"hi"}`, "message", "Invalid value at 'message'"},
		{"unknown top-level field", `{"message":{"token":"t"},"dry":true}`, "dry", `Unknown name "dry"`},
		{"unknown message field", `{"message":{"token":"t","priority":"high"}}`, "message.priority", `Unknown name "priority" at 'message'`},
		{"validate_only not bool", `{"validate_only":"yes","message":{"token":"t"}}`, "validate_only", "TYPE_BOOL"},
		{"no target", `{"message":{"data":{"a":"b"}}}`, "message", "Recipient of the message is not set"},
		{"empty token", `{"message":{"token":""}}`, "message", "Recipient of the message is not set"},
		{"two targets", `{"message":{"token":"t","topic":"news"}}`, "message", "oneof field 'target' is already set"},
		{"token not a string", `{"message":{"token":42}}`, "message.token", "TYPE_STRING"},
		{"token with a space", `{"message":{"token":"a b"}}`, "message.token", "not a valid FCM registration token"},
		{"bad topic", `{"message":{"topic":"a b"}}`, "message.topic", "Invalid topic name"},
		{"data value a number", `{"message":{"token":"t","data":{"n":1}}}`, "message.data[n]", "TYPE_STRING"},
		{"data value null", `{"message":{"token":"t","data":{"n":null}}}`, "message.data[n]", "TYPE_STRING"},
		{"data not an object", `{"message":{"token":"t","data":["a"]}}`, "message.data", "TYPE_MESSAGE"},
		{"reserved data key", `{"message":{"token":"t","data":{"from":"x"}}}`, "message.data", `"from" is reserved`},
		{"google data key", `{"message":{"token":"t","data":{"google.x":"x"}}}`, "message.data", "reserved"},
		{"data too big", `{"message":{"token":"t","data":{"k":"` + strings.Repeat("x", 4096) + `"}}}`, "message", "Message is too big"},
		{"ttl without unit", `{"message":{"token":"t","android":{"ttl":"3.5"}}}`, "message.android.ttl", "google.protobuf.Duration"},
		{"ttl in minutes", `{"message":{"token":"t","android":{"ttl":"5m"}}}`, "message.android.ttl", "google.protobuf.Duration"},
		{"negative ttl", `{"message":{"token":"t","android":{"ttl":"-1s"}}}`, "message.android.ttl", "google.protobuf.Duration"},
		{"ttl a number", `{"message":{"token":"t","android":{"ttl":60}}}`, "message.android.ttl", "google.protobuf.Duration"},
		{"bad priority", `{"message":{"token":"t","android":{"priority":"urgent"}}}`, "message.android.priority", "TYPE_ENUM"},
		{"android data number", `{"message":{"token":"t","android":{"data":{"a":1}}}}`, "message.android.data[a]", "TYPE_STRING"},
		{"notification title number", `{"message":{"token":"t","notification":{"title":1}}}`, "message.notification[title]", "TYPE_STRING"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := do(t, http.MethodPost, sendURL(s), tc.body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			e := decode[googleError](t, b)
			if e.Error.Code != 400 || e.Error.Status != "INVALID_ARGUMENT" || e.fcmErrorCode() != "INVALID_ARGUMENT" {
				t.Errorf("body %s", b)
			}
			if !strings.Contains(e.Error.Message, tc.message) {
				t.Errorf("message %q, want it to contain %q", e.Error.Message, tc.message)
			}
			var field string
			for _, d := range e.Error.Details {
				if d.Type == "type.googleapis.com/google.rpc.BadRequest" && len(d.FieldViolations) == 1 {
					field = d.FieldViolations[0].Field
				}
			}
			if field != tc.field {
				t.Errorf("field violation %q, want %q", field, tc.field)
			}
		})
	}
	if st := s.Stats(); st.Accepted != 0 || st.Errors[fcmtest.InvalidArgument] != len(cases) {
		t.Errorf("stats %+v, want %d INVALID_ARGUMENT", st, len(cases))
	}
}

func TestValidRequestBodies(t *testing.T) {
	t.Parallel()
	s := fcmtest.NewServer(t, fcmtest.Config{})
	bodies := []string{
		`{"message":{"token":"t1"}}`,
		`{"validate_only":false,"message":{"token":"t2","android":{"ttl":"3.5s","priority":"normal"}}}`,
		`{"message":{"token":"t3","android":{"ttl":"0s","priority":"HIGH"},"fcmOptions":{"analytics_label":"x"}}}`,
		`{"message":{"token":"t4","data":{"k":"` + strings.Repeat("x", 4000) + `"}}}`,
		`{"message":{"token":"t5","topic":null,"data":{}}}`,
	}
	for _, body := range bodies {
		resp, b := do(t, http.MethodPost, sendURL(s), body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", body, resp.StatusCode, b)
		}
		if name := decode[map[string]string](t, b)["name"]; !strings.HasPrefix(name, "projects/"+project+"/messages/") {
			t.Errorf("name %q", name)
		}
	}
	resp, b := do(t, http.MethodPost, sendURL(s), `{"validateOnly":true,"message":{"token":"t6"}}`)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "fake_message_id") {
		t.Errorf("validateOnly: %d %s", resp.StatusCode, b)
	}
	if s.Count() != len(bodies) {
		t.Errorf("count %d, want %d", s.Count(), len(bodies))
	}
}
