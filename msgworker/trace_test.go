package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/telemetry"
)

// The tracing middleware continues the traceparent of the AMQP headers:
// the handler's context carries the trace (with tracing off, the
// traceparent itself), and the log lines of the middleware below it carry
// trace_id.
func TestTracingMiddleware(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name    string
		headers amqp.Table
		wantTP  string
		wantLog string
	}{
		{name: "with traceparent", headers: amqp.Table{"traceparent": tp}, wantTP: tp, wantLog: "4bf92f3577b34da6a3ce929d0e0e4736"},
		{name: "invalid traceparent", headers: amqp.Table{"traceparent": "00-nope"}},
		{name: "no headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := telemetry.NewLogger(&buf, "json", "debug")
			var got string
			h := chain(func(ctx context.Context, m *Message) error {
				got = telemetry.TraceParent(ctx)
				return errors.New("boom")
			}, tracing(), logging(log))
			m := &Message{Delivery: amqpx.Delivery{Headers: tt.headers}, Queue: queueCommands}
			if err := h(t.Context(), m); err == nil {
				t.Fatal("the handler's error was lost")
			}
			if got != tt.wantTP {
				t.Errorf("handler's traceparent = %q, want %q", got, tt.wantTP)
			}
			var line map[string]any
			if err := json.Unmarshal([]byte(strings.TrimSpace(buf.String())), &line); err != nil {
				t.Fatalf("log %q: %v", buf.String(), err)
			}
			if id, _ := line["trace_id"].(string); id != tt.wantLog {
				t.Errorf("log line trace_id = %q, want %q (line %s)", id, tt.wantLog, buf.String())
			}
			if id := m.traceID(); id != tt.wantLog {
				t.Errorf("Message.traceID() = %q, want %q", id, tt.wantLog)
			}
		})
	}
}
