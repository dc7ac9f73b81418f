package router

import (
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// tracingOption is the server option that makes each call of the
// RouterService a span, continuing the caller's trace when the call carries
// a W3C traceparent (and tracestate). Health checks and reflection are not
// traced. Nil when tracing is off.
func tracingOption(tp trace.TracerProvider) grpc.ServerOption {
	if tp == nil {
		return nil
	}
	prefix := "/" + heraldv1.RouterService_ServiceDesc.ServiceName + "/"
	return grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
		// Herald's metrics are Prometheus'; otelgrpc's stay unrecorded.
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool { return strings.HasPrefix(info.FullMethodName, prefix) }),
	))
}

// newTracer is the service's tracer: nil when tracing is off.
func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(delivery.TracerName)
}
