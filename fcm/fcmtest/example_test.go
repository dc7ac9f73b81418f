package fcmtest_test

import (
	"context"
	"fmt"

	"firebase.google.com/go/v4/messaging"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// The real firebase-admin-go client sends to the emulator, which records
// what it accepts and answers the errors it is told to.
func Example() {
	ctx := context.Background()
	emu, err := fcmtest.New(fcmtest.Config{Project: "herald-dev"})
	if err != nil {
		panic(err)
	}
	if err := emu.Start(); err != nil {
		panic(err)
	}
	defer emu.Close()

	client, err := fcmtest.NewClient(ctx, emu.Endpoint(), "herald-dev")
	if err != nil {
		panic(err)
	}
	emu.Unregister("stale-device")

	_, err = client.Send(ctx, &messaging.Message{Token: "device-1", Data: map[string]string{"event": "hello"}})
	fmt.Println("device-1:", err)
	_, err = client.Send(ctx, &messaging.Message{Token: "stale-device"})
	fmt.Println("stale-device unregistered:", messaging.IsUnregistered(err))

	for _, m := range emu.Messages() {
		fmt.Println("recorded:", m.Token, m.Data["event"])
	}
	// Output:
	// device-1: <nil>
	// stale-device unregistered: true
	// recorded: device-1 hello
}
