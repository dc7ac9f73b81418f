package fcm

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/herald-push/herald/delivery"
)

// sendSpans are the spans ("herald.fcm.send") of a batch's notifications
// that carry a trace context, by item; nil when tracing is off. Each one
// continues the trace of the router's Kafka write, which the envelope
// carries through retries and dead-letter replays too, and covers the
// item's pushes, from the device lookup to the settled outcome.
type sendSpans []trace.Span

// startSends starts the spans of items.
func (w *Worker) startSends(ctx context.Context, items []item) sendSpans {
	if w.tracer == nil {
		return nil
	}
	spans := make(sendSpans, len(items))
	for i, it := range items {
		if it.env.GetTraceparent() == "" {
			continue
		}
		_, spans[i] = w.tracer.Start(delivery.TraceContext(ctx, it.env), "herald.fcm.send",
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
				delivery.AttrNotificationID.String(it.env.GetId()),
				attribute.Int("herald.fcm.attempt", int(it.task.GetAttempts())+1),
				attribute.Bool("herald.fcm.retry", it.task != nil),
			))
	}
	return spans
}

// end ends the spans with the outcomes of the items' pushes: how many were
// sent, failed retryably (retried or, with the budget spent, dead-lettered),
// or failed for good, and the last error code. A
// span with pushes that were not sent has an error status. err, if set, is
// the batch's own failure.
func (s sendSpans) end(pushes []push, outcomes []outcome, err error) {
	if s == nil {
		return
	}
	type tally struct {
		pushes, sent, retry, failed int
		code, msg                   string
	}
	tallies := make([]tally, len(s))
	for j, o := range outcomes {
		t := &tallies[pushes[j].item]
		t.pushes++
		switch o.class {
		case sent:
			t.sent++
			continue
		case retryable:
			t.retry++
		default:
			t.failed++
		}
		t.code, t.msg = o.code, o.msg
	}
	for i, span := range s {
		if span == nil {
			continue
		}
		t := tallies[i]
		span.SetAttributes(attribute.Int("herald.fcm.pushes", t.pushes), attribute.Int("herald.fcm.sent", t.sent),
			attribute.Int("herald.fcm.retryable", t.retry), attribute.Int("herald.fcm.failed", t.failed))
		switch {
		case err != nil:
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		case t.code != "":
			span.SetAttributes(attribute.String("herald.fcm.code", t.code))
			span.SetStatus(codes.Error, t.code+": "+t.msg)
		case t.pushes == 0:
			span.SetAttributes(attribute.String("herald.fcm.outcome", "no_push"))
		default:
			span.SetStatus(codes.Ok, "")
		}
		span.End()
	}
}
