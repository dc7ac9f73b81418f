package testenv

import (
	"context"
	"encoding/hex"
	"net"
	"strconv"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// OTLP is an OpenTelemetry collector's trace service, as far as a test
// needs one: it accepts OTLP/gRPC exports and keeps every span.
type OTLP struct {
	collectortrace.UnimplementedTraceServiceServer
	// Addr is its host:port.
	Addr string

	mu    sync.Mutex
	spans []ReceivedSpan
}

// ReceivedSpan is a span the receiver got, with the service that sent it.
type ReceivedSpan struct {
	Service string
	*tracepb.Span
}

// TraceID is the span's trace id in hex.
func (s ReceivedSpan) TraceID() string { return hex.EncodeToString(s.GetTraceId()) }

// ID is the span's id in hex.
func (s ReceivedSpan) ID() string { return hex.EncodeToString(s.GetSpanId()) }

// Parent is the span's parent span id in hex; "" for a root.
func (s ReceivedSpan) Parent() string { return hex.EncodeToString(s.GetParentSpanId()) }

// Attr is the string form of one of the span's attributes; "" when it has
// none of that name.
func (s ReceivedSpan) Attr(key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue
		case *commonpb.AnyValue_IntValue:
			return strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_BoolValue:
			return strconv.FormatBool(v.BoolValue)
		}
	}
	return ""
}

// StartOTLP serves an OTLP/gRPC trace receiver on a free port until the
// test ends.
func StartOTLP(tb testing.TB) *OTLP {
	tb.Helper()
	r := &OTLP{}
	srv := Serve(tb, func(ctx context.Context, lis net.Listener) error {
		g := grpc.NewServer()
		collectortrace.RegisterTraceServiceServer(g, r)
		go func() {
			<-ctx.Done()
			g.Stop()
		}()
		return g.Serve(lis)
	})
	r.Addr = srv.Addr
	return r
}

// Export keeps the spans of an export.
func (r *OTLP) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		var service string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, ReceivedSpan{Service: service, Span: sp})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans are the spans received so far.
func (r *OTLP) Spans() []ReceivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ReceivedSpan(nil), r.spans...)
}

// Trace is the spans received so far of trace id (hex), by name; a name
// that occurs more than once keeps its first span.
func (r *OTLP) Trace(id string) map[string]ReceivedSpan {
	out := make(map[string]ReceivedSpan)
	for _, s := range r.Spans() {
		if _, seen := out[s.GetName()]; !seen && s.TraceID() == id {
			out[s.GetName()] = s
		}
	}
	return out
}
