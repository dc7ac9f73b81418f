package sseedge

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// eventTrace is the trace context an event came with, when tracing is on.
type eventTrace struct {
	env      *heraldv1.Envelope // holds only the trace context
	received time.Time          // when the edge decoded the event
}

// newEventTrace is env's trace for an event decoded now, or nil when
// tracing is off or env carries no trace context.
func (s *Server) newEventTrace(env *heraldv1.Envelope, now time.Time) *eventTrace {
	if s.tracer == nil || env.GetTraceparent() == "" {
		return nil
	}
	return &eventTrace{env: &heraldv1.Envelope{Traceparent: env.GetTraceparent(), Tracestate: env.GetTracestate()}, received: now}
}

// traceWrite records the write of ev to st, at now, as a span
// ("herald.sse.deliver") of the trace ev came with: from the edge's receipt
// of the event to the write's end.
func (s *Server) traceWrite(ctx context.Context, st *stream, ev *outEvent, now time.Time) {
	parent := delivery.TraceContext(ctx, ev.trace.env)
	_, span := s.tracer.Start(parent, "herald.sse.deliver", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithTimestamp(ev.trace.received), trace.WithAttributes(
			delivery.AttrNotificationID.String(ev.id),
			attribute.String("herald.edge_id", s.cfg.EdgeID),
			attribute.String("herald.conn_id", st.conn.ID),
			attribute.Int64("herald.event_id", int64(ev.eventID)),
		))
	span.End(trace.WithTimestamp(now))
}
