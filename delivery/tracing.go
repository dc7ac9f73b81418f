package delivery

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The W3C trace context's fields, as an envelope and a Kafka record carry
// them.
const (
	TraceparentKey = "traceparent"
	TracestateKey  = "tracestate"
)

// TracerName names the tracers of Herald's parts.
const TracerName = "github.com/herald-push/herald"

// Attribute keys of Herald's spans.
const (
	AttrNotificationID = attribute.Key("herald.notification_id")
	AttrRoute          = attribute.Key("herald.route")
	AttrEventID        = attribute.Key("herald.event_id")
	AttrSubscribers    = attribute.Key("herald.subscribers")
	AttrDuplicate      = attribute.Key("herald.duplicate")
)

// TraceCarrier is an envelope's trace context as a
// propagation.TextMapCarrier.
type TraceCarrier struct{ Env *heraldv1.Envelope }

var _ propagation.TextMapCarrier = TraceCarrier{}

// Get returns the value of a trace context field.
func (c TraceCarrier) Get(key string) string {
	switch key {
	case TraceparentKey:
		return c.Env.GetTraceparent()
	case TracestateKey:
		return c.Env.GetTracestate()
	}
	return ""
}

// Set sets a trace context field; others are ignored.
func (c TraceCarrier) Set(key, value string) {
	switch key {
	case TraceparentKey:
		c.Env.Traceparent = value
	case TracestateKey:
		c.Env.Tracestate = value
	}
}

// Keys are the fields the carrier holds.
func (c TraceCarrier) Keys() []string { return []string{TraceparentKey, TracestateKey} }

// SetTrace sets env's trace context to the span of ctx, and clears it when
// ctx has none.
func SetTrace(ctx context.Context, env *heraldv1.Envelope) {
	env.Traceparent, env.Tracestate = "", ""
	propagation.TraceContext{}.Inject(ctx, TraceCarrier{env})
}

// TraceContext returns ctx with env's trace context as its remote parent
// span; ctx itself when env carries none.
func TraceContext(ctx context.Context, env *heraldv1.Envelope) context.Context {
	if env.GetTraceparent() == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, TraceCarrier{env})
}

// startSpan starts a span of the publisher's under ctx, for env, and sets
// env's trace context to it. With tracing off it does nothing, and returns
// ctx and a nil span.
func (p *Publisher) startSpan(ctx context.Context, name string, env *heraldv1.Envelope) (context.Context, trace.Span) {
	if p.tracer == nil {
		return ctx, nil
	}
	ctx, span := p.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer))
	if env != nil {
		span.SetAttributes(AttrNotificationID.String(env.GetId()))
		SetTrace(ctx, env)
	}
	return ctx, span
}

// endSpan ends a span of startSpan's, nil included, with the outcome.
func endSpan(span trace.Span, r Result, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	} else if r.Route != "" {
		span.SetAttributes(AttrRoute.String(string(r.Route)), AttrEventID.String(r.EventID),
			AttrSubscribers.Int(r.Subscribers), AttrDuplicate.Bool(r.Duplicate))
	}
	span.End()
}

// traceID is the trace id of ctx's span, for the trail, or "" when
// tracing is off or ctx has no span.
func (p *Publisher) traceID(ctx context.Context) string {
	if p.tracer == nil {
		return ""
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.TraceID().String()
	}
	return ""
}

// traceBudget counts the notifications traced in the current second.
type traceBudget struct {
	mu   sync.Mutex
	sec  int64
	used int
}

// take reports whether a notification at now may be traced, at most rate a
// second (a negative rate: every one).
func (b *traceBudget) take(now time.Time, rate int) bool {
	if rate < 0 {
		return true
	}
	sec := now.Unix()
	b.mu.Lock()
	defer b.mu.Unlock()
	if sec != b.sec {
		b.sec, b.used = sec, 0
	}
	if b.used >= rate {
		return false
	}
	b.used++
	return true
}
