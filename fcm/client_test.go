package fcm_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
)

func TestNewSenderSpreadsOverClients(t *testing.T) {
	t.Parallel()
	for _, h2c := range []bool{false, true} {
		t.Run("h2c="+strconv.FormatBool(h2c), func(t *testing.T) {
			t.Parallel()
			emu := fcmtest.NewServer(t, fcmtest.Config{Project: "herald-test"})
			s, err := fcm.NewSender(context.Background(), fcm.ClientConfig{Project: "herald-test", Endpoint: emu.Endpoint(), Conns: 3, H2C: h2c})
			if err != nil {
				t.Fatal(err)
			}
			var msgs []*messaging.Message
			for i := range 120 {
				msgs = append(msgs, &messaging.Message{Token: "tok-" + strconv.Itoa(i)})
			}
			for range 3 {
				resp, err := s.SendEach(context.Background(), msgs)
				if err != nil || resp.SuccessCount != len(msgs) {
					t.Fatalf("SendEach: %v, %d of %d sent", err, resp.SuccessCount, len(msgs))
				}
			}
			if n := emu.Count(); n != 360 {
				t.Fatalf("emulator got %d, want 360", n)
			}
		})
	}
	if _, err := fcm.NewSender(context.Background(), fcm.ClientConfig{Project: "p", Endpoint: "http://127.0.0.1:1/v1", Conns: -1}); err == nil {
		t.Fatal("Conns -1 accepted")
	}
}

// TestSenderAnswersEachMessage sends calls that overlap, each with an
// invalid message among valid ones: every message gets its own answer, in
// order, the invalid one fails alone, and nothing else is lost or sent
// twice.
func TestSenderAnswersEachMessage(t *testing.T) {
	t.Parallel()
	emu := fcmtest.NewServer(t, fcmtest.Config{Project: "herald-test"})
	s, err := fcm.NewSender(t.Context(), fcm.ClientConfig{Project: "herald-test", Endpoint: emu.Endpoint(), Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	const calls, per = 8, 60
	errs := make(chan error, calls)
	for c := range calls {
		go func() {
			msgs := make([]*messaging.Message, per)
			for i := range msgs {
				msgs[i] = &messaging.Message{Token: "tok-" + strconv.Itoa(c) + "-" + strconv.Itoa(i)}
			}
			msgs[7] = &messaging.Message{} // no target: the SDK refuses it
			resp, err := s.SendEach(t.Context(), msgs)
			switch {
			case err != nil:
				errs <- err
			case len(resp.Responses) != per || resp.SuccessCount != per-1 || resp.FailureCount != 1:
				errs <- fmt.Errorf("call %d: %d responses, %d sent, %d failed; want %d, %d, 1", c, len(resp.Responses), resp.SuccessCount, resp.FailureCount, per, per-1)
			case resp.Responses[7].Success || resp.Responses[7].Error == nil:
				errs <- fmt.Errorf("call %d: the invalid message answered %+v", c, resp.Responses[7])
			default:
				errs <- nil
			}
		}()
	}
	for range calls {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := emu.Count(); n != calls*(per-1) {
		t.Fatalf("emulator got %d, want %d", n, calls*(per-1))
	}
	for c := range calls {
		for _, i := range []int{0, 8, per - 1} {
			if n := len(emu.ByToken("tok-" + strconv.Itoa(c) + "-" + strconv.Itoa(i))); n != 1 {
				t.Fatalf("tok-%d-%d pushed %d times, want once", c, i, n)
			}
		}
	}
	if _, err := s.SendEach(t.Context(), nil); err == nil {
		t.Fatal("an empty call accepted")
	}
	if _, err := s.SendEach(t.Context(), make([]*messaging.Message, 501)); err == nil {
		t.Fatal("a call of 501 messages accepted")
	}
}
