package fcmtest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

func TestProbe(t *testing.T) {
	_, c := newTestEmulator(t, fcmtest.Config{})
	for i := range 5 {
		st := time.Now()
		_, err := c.Send(context.Background(), &messaging.Message{Token: fmt.Sprint("t", i)})
		t.Log(time.Since(st), err)
	}
	msgs := make([]*messaging.Message, 100)
	for i := range msgs {
		msgs[i] = &messaging.Message{Token: fmt.Sprintf("tok-%03d", i)}
	}
	st := time.Now()
	c.SendEach(context.Background(), msgs)
	t.Log("each100", time.Since(st))
}
