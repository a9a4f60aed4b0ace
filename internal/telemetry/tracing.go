package telemetry

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/iotgw/gateway/internal/buildinfo"
)

// Tracing (OpenTelemetry). Every binary calls StartTracing once, before it
// takes work, and calls the returned stop last, after its own shutdown, so
// that the spans of the work it finished are flushed. The configuration
// is the standard OTEL_* variables only:
//
//	OTEL_TRACES_EXPORTER         otlp, console, none, or a comma-separated list (otlp,console).
//	                             Unset: otlp when an OTLP endpoint is set, else none.
//	OTEL_SDK_DISABLED            true: no tracing, whatever else is set.
//	OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL   http/protobuf (default) or grpc.
//	OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE, _CERTIFICATE…
//	                             read by the OTLP exporters themselves.
//	OTEL_SERVICE_NAME            default: the binary's name; OTEL_RESOURCE_ATTRIBUTES adds more.
//	OTEL_TRACES_SAMPLER(_ARG)    read by the SDK (default parentbased_always_on).
//	OTEL_BSP_*                   the batch span processor's queue and delays.
//
// With no exporter the global tracer provider stays OpenTelemetry's no-op
// one: a span costs a context value and carries its parent's trace, so
// trace IDs still travel and reach the logs (LogTraceID). console is the
// SDK's stdout exporter, one JSON object per span on stdout, beside the
// log lines.

// tracerName is the instrumentation scope of every span of the gateway.
const tracerName = "github.com/iotgw/gateway"

// propagator is the W3C trace context, used for every carrier (AMQP
// headers, the command record and mailbox entries, MQTT 5 user
// properties, HTTP headers).
var propagator = propagation.TraceContext{}

// Tracer is the tracer every part of the gateway starts its spans with.
func Tracer() trace.Tracer { return otel.Tracer(tracerName) }

// enabled is set while StartTracing's SDK provider is installed.
var enabled atomic.Bool

// Enabled reports whether spans are recorded and exported (StartTracing
// installed an exporter). A hot path may skip a span that would be a
// no-op and pass its parent's traceparent on as it is.
func Enabled() bool { return enabled.Load() }

// UseProvider installs tp as the global tracer provider and marks tracing
// enabled, as StartTracing does; tests use it with an in-memory recorder.
func UseProvider(tp trace.TracerProvider) {
	otel.SetTracerProvider(tp)
	enabled.Store(true)
}

// ResetProvider puts OpenTelemetry's no-op provider back (tracing off).
func ResetProvider() {
	enabled.Store(false)
	otel.SetTracerProvider(noop.NewTracerProvider())
}

// Exporters names the span exporters that OTEL_* variables (read with
// getenv) select: a subset of "otlp" and "console", none when tracing is
// off. An unknown exporter or OTLP protocol is an error.
func Exporters(getenv func(string) string) ([]string, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return nil, nil
	}
	spec := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))
	if spec == "" {
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
		spec = "otlp"
	}
	var out []string
	for _, name := range strings.Split(spec, ",") {
		switch name = strings.ToLower(strings.TrimSpace(name)); name {
		case "none":
			return nil, nil
		case "otlp", "console":
			out = append(out, name)
		default:
			return nil, fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER: unknown exporter %q (want otlp, console or none)", name)
		}
	}
	if _, err := otlpProtocol(getenv); err != nil {
		return nil, err
	}
	return out, nil
}

// otlpProtocol is the OTLP transport: http/protobuf or grpc.
func otlpProtocol(getenv func(string) string) (string, error) {
	p := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if p == "" {
		p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p = strings.TrimSpace(p); p {
	case "", "http/protobuf":
		return "http/protobuf", nil
	case "grpc":
		return "grpc", nil
	}
	return "", fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported (want http/protobuf or grpc)", p)
}

// StartTracing installs the global tracer provider and the W3C trace
// context propagator for the binary service, as the OTEL_* variables
// (getenv) say; stdout receives the console exporter's spans. It returns
// stop, which flushes the spans still queued and shuts the exporters
// down by ctx's deadline; stop is a no-op when tracing is off. The
// OTLP exporters connect lazily: an unreachable collector costs dropped
// spans (logged by OpenTelemetry's error handler), never a failed start.
func StartTracing(ctx context.Context, service string, getenv func(string) string, stdout io.Writer, log *slog.Logger) (stop func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagator)
	names, err := Exporters(getenv)
	if err != nil || len(names) == 0 {
		return func(context.Context) error { return nil }, err
	}
	opts := []sdktrace.TracerProviderOption{}
	var exporters []sdktrace.SpanExporter
	for _, name := range names {
		var exp sdktrace.SpanExporter
		switch name {
		case "console":
			exp, err = stdouttrace.New(stdouttrace.WithWriter(stdout))
		case "otlp":
			proto, _ := otlpProtocol(getenv)
			if proto == "grpc" {
				exp, err = otlptracegrpc.New(ctx)
			} else {
				exp, err = otlptracehttp.New(ctx)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("cannot create the %s span exporter: %w", name, err)
		}
		exporters = append(exporters, exp)
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service),
			attribute.String("service.version", buildinfo.Read().Version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("cannot describe the tracing resource: %w", err)
	}
	opts = append(opts, sdktrace.WithResource(res))
	tp := sdktrace.NewTracerProvider(opts...)
	UseProvider(tp)
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("tracing: cannot export spans", "err", err)
		}))
		log.Info("tracing on", "exporters", strings.Join(names, ","))
	}
	return func(ctx context.Context) error {
		enabled.Store(false)
		err := tp.Shutdown(ctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("cannot flush spans: %w", err)
		}
		return nil
	}, nil
}

// ContextWithTraceParent returns ctx with the remote span context of a W3C
// traceparent as the parent of the spans started from it; ctx unchanged
// when tp is empty or not valid.
func ContextWithTraceParent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{"traceparent": tp})
}

// TraceParent is the W3C traceparent of ctx's span (or of the remote
// span context it carries), "" when it has none.
func TraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"]
}

// TraceID is the trace ID of ctx's span context in hex, "" when it has none.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// TraceIDOf is the trace ID of a W3C traceparent, "" when tp is not valid.
func TraceIDOf(tp string) string {
	return TraceID(ContextWithTraceParent(context.Background(), tp))
}

// KeyTraceID is the log attribute of a command's trace ID, the same in
// every binary.
const KeyTraceID = "trace_id"

// traceHandler adds trace_id to a record logged with a context that
// carries a span context (slog's *Context methods), unless the record
// has it already.
type traceHandler struct{ slog.Handler }

// LogTraceID wraps h so that every line logged with a context carrying a
// trace (InfoContext and the like) gets trace_id.
func LogTraceID(h slog.Handler) slog.Handler { return traceHandler{h} }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := TraceID(ctx); id != "" {
		has := false
		r.Attrs(func(a slog.Attr) bool {
			has = a.Key == KeyTraceID
			return !has
		})
		if !has {
			r.AddAttrs(slog.String(KeyTraceID, id))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(as)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}

// FlushTimeout bounds the flush of queued spans at shutdown (Flush).
const FlushTimeout = 5 * time.Second

// Flush calls stop (StartTracing's) with a deadline of FlushTimeout and
// logs what it could not flush. A binary defers it right after
// StartTracing, so that it runs last: after the binary stopped taking
// work and finished what was in flight.
func Flush(stop func(context.Context) error, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
	defer cancel()
	if err := stop(ctx); err != nil && log != nil {
		log.Warn("tracing: spans lost at shutdown", "err", err)
	}
}

// EnsureTrace returns ctx unchanged when it carries a span context, else
// ctx with a new random one (sampled, remote): a request that came without
// a trace while tracing is off still gets a trace ID that its messages and
// log lines carry.
func EnsureTrace(ctx context.Context) context.Context {
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID(b[:16]),
		SpanID:     trace.SpanID(b[16:]),
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}
