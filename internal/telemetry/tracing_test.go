package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/testenv"
)

func TestExporters(t *testing.T) {
	tests := []struct {
		env     map[string]string
		want    string
		wantErr string
	}{
		{env: nil, want: ""},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "none"}, want: ""},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "console"}, want: "console"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp, console"}, want: "otlp,console"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, want: "otlp"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, want: "otlp"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, want: ""},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, want: "otlp"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: `unknown exporter "zipkin"`},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, wantErr: `"http/json" is not supported`},
	}
	for _, tt := range tests {
		got, err := Exporters(func(k string) string { return tt.env[k] })
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Exporters(%v) error = %v, want one containing %q", tt.env, err, tt.wantErr)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != tt.want {
			t.Errorf("Exporters(%v) = %q, %v; want %q, nil", tt.env, got, err, tt.want)
		}
	}
}

// resetTracing puts the no-op provider back when the test ends.
func resetTracing(t *testing.T) {
	t.Cleanup(ResetProvider)
}

func TestStartTracingOTLPHTTP(t *testing.T) {
	resetTracing(t)
	rcv := testenv.NewOTLPReceiver(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL())
	t.Setenv("OTEL_SERVICE_NAME", "svc-under-test")
	stop, err := StartTracing(t.Context(), "binary", os.Getenv, &bytes.Buffer{}, Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := Tracer().Start(t.Context(), "parent")
	_, child := Tracer().Start(ctx, "child", trace.WithSpanKind(trace.SpanKindProducer))
	child.End()
	parent.End()
	// stop flushes: the spans arrive before it returns.
	sctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := stop(sctx); err != nil {
		t.Fatal(err)
	}
	spans := rcv.Spans()
	if len(spans) != 2 {
		t.Fatalf("received %d spans (%v), want 2; receiver errors %v", len(spans), spans, rcv.Errors())
	}
	byName := map[string]testenv.Span{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	p, c := byName["parent"], byName["child"]
	if p.Service != "svc-under-test" {
		t.Errorf("service.name = %q, want svc-under-test (OTEL_SERVICE_NAME)", p.Service)
	}
	if c.ParentID != p.SpanID || c.TraceID != p.TraceID || p.ParentID != "" {
		t.Errorf("child = %+v, parent = %+v: want child's parent the parent span, one trace", c, p)
	}
	if c.Kind != 4 {
		t.Errorf("child kind = %d, want 4 (producer)", c.Kind)
	}
}

func TestStartTracingConsole(t *testing.T) {
	resetTracing(t)
	var out bytes.Buffer
	getenv := func(k string) string { return map[string]string{"OTEL_TRACES_EXPORTER": "console"}[k] }
	stop, err := StartTracing(t.Context(), "binary", getenv, &out, Discard())
	if err != nil {
		t.Fatal(err)
	}
	_, span := Tracer().Start(t.Context(), "to-the-console")
	span.End()
	if err := stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name        string
		SpanContext struct{ TraceID string }
	}
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &got); err != nil {
		t.Fatalf("console output %q is not one JSON span: %v", out.String(), err)
	}
	if got.Name != "to-the-console" || got.SpanContext.TraceID != span.SpanContext().TraceID().String() {
		t.Errorf("console span = %+v, want name to-the-console, trace %s", got, span.SpanContext().TraceID())
	}
}

func TestTracingOffKeepsTheTrace(t *testing.T) {
	resetTracing(t)
	stop, err := StartTracing(t.Context(), "binary", func(string) string { return "" }, &bytes.Buffer{}, Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stop(t.Context()) }()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := ContextWithTraceParent(t.Context(), tp)
	ctx, span := Tracer().Start(ctx, "off")
	defer span.End()
	if span.IsRecording() {
		t.Error("span is recording with tracing off, want the no-op span")
	}
	if got := TraceParent(ctx); got != tp {
		t.Errorf("TraceParent = %q, want the parent's %q", got, tp)
	}
	if got := TraceID(ctx); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("TraceID = %q, want 4bf92f3577b34da6a3ce929d0e0e4736", got)
	}
	for _, bad := range []string{"", "00-zz", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"} {
		if got := TraceIDOf(bad); got != "" {
			t.Errorf("TraceIDOf(%q) = %q, want empty", bad, got)
		}
	}
}

func TestLogTraceID(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "json", "info")
	ctx := ContextWithTraceParent(t.Context(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	log.With("service", "x").InfoContext(ctx, "about a command", "msg_id", "1")
	log.InfoContext(t.Context(), "about nothing")
	log.InfoContext(ctx, "explicit", KeyTraceID, "given")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"4bf92f3577b34da6a3ce929d0e0e4736", "", "given"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines %q, want %d", len(lines), lines, len(want))
	}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		got, _ := m[KeyTraceID].(string)
		if got != want[i] {
			t.Errorf("line %d %s: trace_id = %q, want %q", i, l, got, want[i])
		}
	}
}

// FuzzTraceParent: a traceparent from outside (an HTTP header, an AMQP
// header, an MQTT user property) is parsed by the W3C propagator; what
// travels on is either nothing or a well-formed version 00 traceparent of
// the same trace, never the outsider's string as it came.
func FuzzTraceParent(f *testing.F) {
	for _, s := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
		"", "00-", "not a traceparent",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ctx := ContextWithTraceParent(context.Background(), in)
		got := TraceParent(ctx)
		if got == "" {
			if TraceID(ctx) != "" {
				t.Fatalf("ContextWithTraceParent(%q): a trace ID %s without a traceparent", in, TraceID(ctx))
			}
			return
		}
		if len(got) != 55 || !strings.HasPrefix(got, "00-") || got[35] != '-' || got[52] != '-' ||
			strings.Trim(got[3:35]+got[36:52]+got[53:], "0123456789abcdef") != "" {
			t.Fatalf("ContextWithTraceParent(%q) passes on %q, not a version 00 traceparent", in, got)
		}
		if TraceIDOf(got) != TraceID(ctx) || TraceIDOf(in) != TraceID(ctx) {
			t.Fatalf("trace IDs differ: in %q, out %q", in, got)
		}
	})
}
