package main

import (
	"fmt"
	"io"
	"strings"
)

// banner is what the all-in-one prints once it serves: where each part is,
// what to open and what to call.
type banner struct {
	redis, kafka, fcm string // each part, and whether it is embedded
	http, grpc, admin string // listen addresses
	token, user       string // the development token and its user
	fcmEndpoint       string // the FCM endpoint pushed to
	brokers           string // the Kafka brokers
}

func (b banner) print(w io.Writer) {
	fmt.Fprintf(w, `
Herald is running in one process: router, SSE edge and FCM worker.
  Redis:  %[1]s
  Kafka:  %[7]s
  FCM:    %[8]s

Open the demo page in a browser (it shows events as they arrive, and reconnects):
  http://%[2]s/?access_token=%[3]s&topic=demo.chat

or the raw event stream:
  curl -N 'http://%[2]s/v1/events?access_token=%[3]s'

Web apps read it with the browser client the edge serves (docs/browser-client.md):
  import { connect } from "http://%[2]s/v1/herald.js";

Send %[4]q a notification, from another terminal:
  go run ./cmd/heraldctl notify -addr %[5]s -user %[4]s -event hello -data '{"msg":"hi"}'

Offline users get a push instead. Register a device for "bob", who is not
connected, notify him, and see the push the FCM emulator received:
  go run ./cmd/heraldctl device register -addr %[5]s -user bob -token demo-device-1 -platform android
  go run ./cmd/heraldctl notify -addr %[5]s -user bob -title "Order filled" -body "100 ACME" -data '{"order":42}'
  curl -s %[9]s/emulator/messages

Pushes that fail for good land in the dead-letter topic:
  go run ./cmd/heraldctl dlq ls -kafka-brokers %[10]s

gRPC (with reflection):  %[5]s  (no authentication: development only)
Metrics and health:      http://%[6]s/metrics  /healthz  /readyz
Stop with Ctrl-C.

`, b.redis, b.http, b.token, b.user, b.grpc, b.admin, b.kafka, b.fcm,
		strings.TrimSuffix(b.fcmEndpoint, "/v1"), b.brokers)
}
