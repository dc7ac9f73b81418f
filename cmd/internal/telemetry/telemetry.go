// Package telemetry sets up the OpenTelemetry tracing of Herald's binaries
// from the standard OTEL_* environment variables: spans go to an OTLP/gRPC
// collector when one is configured, and tracing is off, at no cost, when
// none is.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// FlushTimeout bounds the export of the last spans at shutdown.
const FlushTimeout = 5 * time.Second

// Tracing is a binary's tracing.
type Tracing struct {
	// Provider is the tracer provider for the binary's parts; nil when
	// tracing is off, which they take as "trace nothing".
	Provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider
	log      *slog.Logger
}

// Enabled reports whether the environment (looked up by getenv) asks for
// traces to be exported:
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none, turns tracing
//     off;
//   - OTEL_TRACES_EXPORTER=otlp turns it on;
//   - otherwise it is on when OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
//
// An exporter other than otlp or none, or an OTLP protocol other than
// grpc, is an error.
func Enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	on := getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	switch e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e {
	case "":
	case "none":
		return false, nil
	case "otlp":
		on = true
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: Herald exports traces with otlp (or none)", e)
	}
	if !on {
		return false, nil
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := strings.TrimSpace(getenv(name)); p != "" {
			if p != "grpc" {
				return false, fmt.Errorf("%s=%q: Herald exports OTLP over grpc only", name, p)
			}
			break
		}
	}
	return true, nil
}

// Setup sets up tracing from the process' environment. When it is on,
// spans are batched and exported with the OTLP/gRPC exporter, which reads
// its endpoint, headers, TLS settings, compression and timeout from the
// OTEL_EXPORTER_OTLP_* variables; the sampler is OTEL_TRACES_SAMPLER's
// (default parentbased_always_on), the batching OTEL_BSP_*'s, and the
// resource's service.name is service unless OTEL_SERVICE_NAME (or
// OTEL_RESOURCE_ATTRIBUTES) names another. Setup does not wait for the
// collector: the exporter connects in the background.
func Setup(ctx context.Context, service string, log *slog.Logger) (*Tracing, error) {
	on, err := Enabled(os.Getenv)
	if err != nil || !on {
		return &Tracing{}, err
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: otlp exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	log.Info("tracing on: exporting spans with OTLP/gRPC", slog.String("service", serviceName(res, service)))
	return &Tracing{Provider: tp, sdk: tp, log: log}, nil
}

// serviceName is res' service.name, or def.
func serviceName(res *resource.Resource, def string) string {
	if v, ok := res.Set().Value(semconv.ServiceNameKey); ok {
		return v.AsString()
	}
	return def
}

// Shutdown exports the spans still buffered and stops the exporter,
// within FlushTimeout, even when ctx is already done (as it is at
// shutdown). With tracing off it does nothing. A failure is logged, and
// returned.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), FlushTimeout)
	defer cancel()
	if err := t.sdk.Shutdown(ctx); err != nil {
		t.log.Warn("tracing: the last spans were not all exported", slog.Any("err", err))
		return fmt.Errorf("telemetry: flush spans: %w", err)
	}
	return nil
}
