package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/metadata"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// TestTraceAcrossDeadLetterReplay: with tracing on, heraldctl trace prints
// the trace id of a notification whose caller sent a traceparent, and a
// replay from the dead-letter topic continues that trace: the replayed
// record carries it in its headers, and the worker's second FCM send is a
// span of the same trace.
func TestTraceAcrossDeadLetterReplay(t *testing.T) {
	o := testenv.StartOffline(t, 1)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	pres, err := presence.New(o.Redis, presence.Config{Prefix: o.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := delivery.NewPublisher(o.Redis, pres, delivery.PublisherConfig{Offline: o.Queue, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Devices: o.Devices, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, srv.Addr))
	o.Deps.TracerProvider = tp
	o.Register(t, "kim", "tok-kim")
	o.Emulator.FailNext(1, fcmtest.ThirdPartyAuthError, 0)
	o.StartWorker(t, o.WorkerConfig(), nil)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "kim", Data: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	o.WaitDeadLetters(t, 1)

	brokers := strings.Join(o.Kafka.Brokers, ",")
	redis := []string{"-redis-addr", testenv.RedisAddr(), "-redis-prefix", o.Prefix}
	ctl := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := run(append(args, redis...), &stdout, &stderr); code != 0 {
			t.Fatalf("heraldctl %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
		}
		return stdout.String()
	}
	var out string
	testenv.WaitFor(t, 10*time.Second, "the dead letter in the trail", func() bool {
		out = ctl("trace", resp.GetNotificationId(), "-user", "kim")
		return strings.Contains(out, "dead-lettered")
	})
	if !strings.Contains(out, "trace id") || !strings.Contains(out, traceID) {
		t.Fatalf("heraldctl trace does not print the trace id %s:\n%s", traceID, out)
	}

	ctl("replay", "-user", "kim", "-kafka-brokers", brokers)
	o.WaitPushes(t, 1)
	var replayed bool
	for _, m := range o.Kafka.ReadAll(queue.DefaultOfflineTopic) {
		for _, h := range m.Headers {
			if h.Key == "traceparent" && strings.Contains(string(h.Value), traceID) {
				replayed = true
			}
		}
	}
	if !replayed {
		t.Fatal("no record of the offline topic carries the trace in a traceparent header")
	}
	var sends []sdktrace.ReadOnlySpan
	testenv.WaitFor(t, 10*time.Second, "the second FCM send's span", func() bool {
		sends = sends[:0]
		for _, s := range rec.Ended() {
			if s.Name() == "herald.fcm.send" {
				sends = append(sends, s)
			}
		}
		return len(sends) == 2
	})
	for i, s := range sends {
		if got := s.SpanContext().TraceID().String(); got != traceID {
			t.Errorf("FCM send %d is in trace %s, want the caller's %s", i, got, traceID)
		}
	}
	if sends[0].Status().Code.String() != "Error" || sends[1].Status().Code.String() != "Ok" {
		t.Errorf("FCM sends' statuses %v, %v; want Error (dead-lettered), then Ok (replayed)",
			sends[0].Status(), sends[1].Status())
	}
}
