package main

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// TestTracing: with OTEL_EXPORTER_OTLP_ENDPOINT naming a collector (a real
// OTLP/gRPC receiver), a Notify carrying a backend's W3C traceparent
// continues the backend's trace. The collector receives one trace for an
// online delivery (backend → router → Redis → the edge's write) and one for
// an offline one (backend → router → Kafka → the worker → its FCM send to
// the emulator), each span the child of the hop that caused it.
func TestTracing(t *testing.T) {
	otlp := testenv.StartOTLP(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+otlp.Addr)
	t.Setenv("OTEL_SERVICE_NAME", "herald-under-test")
	ctx, text, stop := startAllInOne(t)

	streamURL := regexp.MustCompile(`curl -N '([^']+)'`).FindStringSubmatch(text)
	notifyCmd := regexp.MustCompile(`heraldctl notify -addr (\S+) -user (\S+) -event (\S+) -data '([^']*)'`).FindStringSubmatch(text)
	register := regexp.MustCompile(`heraldctl device register -addr \S+ -user (\S+) -token (\S+)`).FindStringSubmatch(text)
	pushes := regexp.MustCompile(`curl -s (\S+/emulator/messages)`).FindStringSubmatch(text)
	if streamURL == nil || notifyCmd == nil || register == nil || pushes == nil {
		t.Fatalf("banner lacks the stream URL, or the notify, register or emulator commands:\n%s", text)
	}
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, notifyCmd[1]))
	// backend is a caller's span: its trace id and span id, and the
	// traceparent that carries them.
	backend := func() (traceID, spanID, traceparent string) {
		var tid [16]byte
		var sid [8]byte
		_, _ = rand.Read(tid[:])
		_, _ = rand.Read(sid[:])
		traceID, spanID = hex.EncodeToString(tid[:]), hex.EncodeToString(sid[:])
		return traceID, spanID, "00-" + traceID + "-" + spanID + "-01"
	}

	// Online: the demo user's stream is open.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, streamURL[1], nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", resp.Status)
	}
	onTrace, onSpan, tp := backend()
	octx := metadata.AppendToOutgoingContext(ctx, "traceparent", tp, "tracestate", "vendor=herald-test")
	sent, err := client.Notify(octx, &heraldv1.NotifyRequest{UserId: notifyCmd[2], Event: notifyCmd[3], Data: []byte(notifyCmd[4])})
	if err != nil {
		t.Fatal(err)
	}
	if sent.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("demo user is not online: %v", sent)
	}
	events := make(chan sseedge.Event, 1)
	go func() {
		dec := sseedge.NewDecoder(resp.Body)
		ev, err := dec.Next()
		for err == nil && ev.Retry != 0 {
			ev, err = dec.Next()
		}
		events <- ev
	}()
	select {
	case ev := <-events:
		if ev.ID != sent.GetEventId() {
			t.Fatalf("stream showed %+v, want the notification %s", ev, sent.GetEventId())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the notification did not arrive on the stream")
	}

	// Offline: a user with a device and no stream.
	if _, err := client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: register[1], Token: register[2],
		Platform: heraldv1.Platform_PLATFORM_ANDROID}); err != nil {
		t.Fatal(err)
	}
	offTrace, offSpan, tp := backend()
	queued, err := client.Notify(metadata.AppendToOutgoingContext(ctx, "traceparent", tp), &heraldv1.NotifyRequest{
		UserId: register[1], Data: []byte("traced"), Push: &heraldv1.PushOptions{Title: "Traced"}})
	if err != nil {
		t.Fatal(err)
	}
	if queued.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("offline user: %v, want ROUTE_PUSH_QUEUED", queued)
	}
	testenv.WaitFor(t, 20*time.Second, "the push at the emulator", func() bool {
		resp, err := http.Get(pushes[1])
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), queued.GetNotificationId())
	})
	// Shutting down flushes the spans still buffered.
	stop()

	const notify = "herald.v1.RouterService/Notify"
	// check fails unless trace id's span name has the parent span parent
	// (a span id, or a name in the same trace), and returns it.
	check := func(id, name, parent string) testenv.ReceivedSpan {
		t.Helper()
		spans := otlp.Trace(id)
		s, ok := spans[name]
		if !ok {
			var names []string
			for n := range spans {
				names = append(names, n)
			}
			t.Fatalf("trace %s has no span %q; it has %q (of %d spans received)", id, name, names, len(otlp.Spans()))
		}
		want := parent
		if p, ok := spans[parent]; ok {
			want = p.ID()
		}
		if s.Parent() != want {
			t.Errorf("span %q's parent is %s, want %s (%s)", name, s.Parent(), want, parent)
		}
		if s.Service != "herald-under-test" {
			t.Errorf("span %q comes from service %q, want OTEL_SERVICE_NAME's herald-under-test", name, s.Service)
		}
		return s
	}

	server := check(onTrace, notify, onSpan)
	if server.GetTraceState() != "vendor=herald-test" {
		t.Errorf("the router's span has tracestate %q, want the caller's", server.GetTraceState())
	}
	check(onTrace, "herald.validate", notify)
	pub := check(onTrace, "herald.publish", notify)
	if pub.Attr("herald.route") != "online" || pub.Attr("herald.notification_id") != sent.GetNotificationId() {
		t.Errorf("herald.publish attributes %v, want route online and the notification id", pub.GetAttributes())
	}
	deliver := check(onTrace, "herald.sse.deliver", "herald.publish")
	if deliver.Attr("herald.notification_id") != sent.GetNotificationId() {
		t.Errorf("herald.sse.deliver attributes %v, want the notification id", deliver.GetAttributes())
	}

	check(offTrace, notify, offSpan)
	check(offTrace, "herald.validate", notify)
	if r := check(offTrace, "herald.publish", notify).Attr("herald.route"); r != "offline" {
		t.Errorf("herald.publish of the offline notification: route %q", r)
	}
	check(offTrace, "herald.kafka.write", notify)
	send := check(offTrace, "herald.fcm.send", "herald.kafka.write")
	if send.Attr("herald.fcm.sent") != "1" || send.GetStatus().GetCode().String() != "STATUS_CODE_OK" {
		t.Errorf("herald.fcm.send: attributes %v, status %v; want 1 sent, OK", send.GetAttributes(), send.GetStatus())
	}
	if _, ok := otlp.Trace(offTrace)["herald.sse.deliver"]; ok {
		t.Error("the offline notification's trace shows an SSE write")
	}
}
