package fcm_test

import (
	"context"
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
