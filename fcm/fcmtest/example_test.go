package fcmtest_test

import (
	"context"
	"fmt"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"

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

// A Server started on a free loopback port stands in for FCM: the
// firebase-admin-go client is pointed at its URL plus "/v1", without
// credentials, and the Server records each request it answers.
func ExampleServer() {
	ctx := context.Background()
	emu, err := fcmtest.New(fcmtest.Config{})
	if err != nil {
		panic(err)
	}
	if err := emu.Start(); err != nil {
		panic(err)
	}
	defer emu.Close()

	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: "herald-dev"},
		option.WithEndpoint(emu.URL()+"/v1"), option.WithoutAuthentication())
	if err != nil {
		panic(err)
	}
	client, err := app.Messaging(ctx)
	if err != nil {
		panic(err)
	}
	if _, err := client.Send(ctx, &messaging.Message{Token: "device-1"}); err != nil {
		panic(err)
	}

	for _, a := range emu.Attempts("") {
		fmt.Println("request:", a.Project, a.Token, a.Status)
	}
	// Output:
	// request: herald-dev device-1 200
}
