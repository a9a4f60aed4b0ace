package mailbox_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// The trace context travels through Redis: the worker's (dispatch)
// traceparent goes into the record and the device's mailbox entry; the
// traceparent of the answer's completion goes into the outbox entry, and
// the relay's into the client's result entry. With OpenTelemetry's no-op
// provider (tracing off) the relay's span is its parent's, so each hop
// carries exactly the traceparent it was given.
func TestTraceParentThroughRedis(t *testing.T) {
	t.Parallel()
	const (
		dispatchTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		answerTP   = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
		timerTP    = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	)
	tests := []struct {
		name       string
		answer     bool   // the device answers (else the answer timer ends it)
		envTP      string // the envelope's traceparent
		ctxTP      string // the worker's context
		answerTP   string // the completion's context
		wantDevice string // the device entry's traceparent
		wantResult string // the client's result entry's traceparent
	}{
		{name: "answered", answer: true, ctxTP: dispatchTP, answerTP: answerTP, wantDevice: dispatchTP, wantResult: answerTP},
		{name: "from the envelope", answer: true, envTP: dispatchTP, answerTP: answerTP, wantDevice: dispatchTP, wantResult: answerTP},
		{name: "answered without the trace", answer: true, ctxTP: dispatchTP, wantDevice: dispatchTP, wantResult: dispatchTP},
		{name: "answered in another trace", answer: true, ctxTP: dispatchTP, answerTP: timerTP, wantDevice: dispatchTP, wantResult: dispatchTP},
		{name: "timeout", answer: false, ctxTP: timerTP, wantDevice: timerTP, wantResult: timerTP},
		{name: "no trace", answer: true, answerTP: answerTP, wantDevice: "", wantResult: answerTP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			c := e.queued(cmd(t, "c1", "d1", `"a"`, ``))
			env := envelope(t, c)
			env.TraceParent = tt.envTP
			ctx := telemetry.ContextWithTraceParent(e.ctx, tt.ctxTP)
			if out, err := e.s.Dispatch(ctx, env, "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
				t.Fatalf("Dispatch = %v, %v, want sent", out, err)
			}
			es, err := e.s.Fetch(e.ctx, "d1", "", 1)
			if err != nil || len(es) != 1 {
				t.Fatalf("Fetch(d1) = %v, %v, want one entry", es, err)
			}
			if es[0].TraceParent != tt.wantDevice {
				t.Errorf("device entry traceparent = %q, want %q", es[0].TraceParent, tt.wantDevice)
			}
			if tt.answer {
				resp := protocol.NewResult(json.RawMessage(`"c1:a"`), json.RawMessage(`{"ok":true}`))
				actx := telemetry.ContextWithTraceParent(e.ctx, tt.answerTP)
				if got, err := e.s.Complete(actx, "c1", "a", "d1", resp, 0, "node-c"); err != nil || got != mailbox.OutcomeSucceeded {
					t.Fatalf("Complete = %v, %v, want succeeded", got, err)
				}
			} else {
				if err := e.s.Ack(e.ctx, "d1", es[0]); err != nil {
					t.Fatal(err)
				}
				e.clock.Add(time.Minute)
				if n, err := e.s.FireTimers(context.Background(), 100, nil); err != nil || n != 1 {
					t.Fatalf("FireTimers = %d, %v, want 1", n, err)
				}
			}
			rs, err := e.s.Fetch(e.ctx, "c1", "", 10)
			if err != nil || len(rs) != 1 {
				t.Fatalf("Fetch(c1) = %v, %v, want one result", rs, err)
			}
			if rs[0].TraceParent != tt.wantResult {
				t.Errorf("result entry traceparent = %q, want %q", rs[0].TraceParent, tt.wantResult)
			}
		})
	}
}
