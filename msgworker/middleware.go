package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/telemetry"
)

// Message is one delivery travelling through a handler chain. Handlers
// fill in what they learn (Outcome, the command's identity) so that the
// middleware around them can log and count it, in the spirit of
// gocraft/work's job struct.
type Message struct {
	amqpx.Delivery
	// Queue is the short name of the queue ("commands" or
	// "commands.dead"), used as a metric label.
	Queue string
	// Outcome is what the handler did, a metric label: a mailbox outcome
	// ("sent", "noop", "succeeded"…) or one of the worker's own ("poison",
	// "unknown", "transient", "error", "panic").
	Outcome string
	// Client, Device and MsgID name the command once the handler has read
	// them; empty until then.
	Client, Device, MsgID string
}

// Outcomes the worker adds to the mailbox's.
const (
	outcomePoison    = "poison"    // undecodable: rejected to the dead letters
	outcomeUnknown   = "unknown"   // no such command (record gone): acked
	outcomeConflict  = "conflict"  // the record is another command with the same id: acked
	outcomeTransient = "transient" // Redis unavailable: held and retried by the consumer
	outcomeError     = "error"     // any other failure: nacked with requeue
	outcomePanic     = "panic"     // the handler panicked: nacked with requeue
	outcomeLogged    = "logged"    // a dead letter that names no command: logged and acked
	outcomeDropped   = "dropped"   // a dead letter that kept failing: logged and acked
)

// Handler handles one Message. Its error decides the acknowledgement as
// amqpx.Handler's does: nil acks, ErrReject dead-letters, ErrTransient
// holds and retries, anything else nacks with requeue.
type Handler func(ctx context.Context, m *Message) error

// Middleware wraps a Handler.
type Middleware func(next Handler) Handler

// chain returns h wrapped by mws; the first middleware is the outermost.
func chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// adapt turns a chain into the amqpx.Handler of one queue.
func adapt(queue string, h Handler) amqpx.Handler {
	return func(ctx context.Context, d amqpx.Delivery) error {
		return h(ctx, &Message{Delivery: d, Queue: queue})
	}
}

// errPanic wraps a recovered panic; it is a plain error, so the delivery
// is nacked with requeue and a message that always panics reaches the
// dead letters after protocol.DeliveryLimit attempts.
var errPanic = errors.New("msgworker: handler panicked")

// recoverer turns a panic of the handlers below it into an error.
func recoverer(log *slog.Logger) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) (err error) {
			defer func() {
				if r := recover(); r != nil {
					m.Outcome = outcomePanic
					log.ErrorContext(ctx, "handler panicked", "queue", m.Queue, "panic", r, "stack", string(debug.Stack()))
					err = fmt.Errorf("%w: %v", errPanic, r)
				}
			}()
			return next(ctx, m)
		}
	}
}

// instrument counts every handled message by queue and outcome and
// observes the handler's duration.
func instrument(mx *metrics) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) error {
			start := time.Now()
			err := next(ctx, m)
			mx.duration.WithLabelValues(m.Queue).Observe(time.Since(start).Seconds())
			mx.handled.WithLabelValues(m.Queue, outcomeOf(m, err)).Inc()
			return err
		}
	}
}

// tracing starts each delivery's consumer span ("dispatch" on the
// command queues, "dead-letter" on the dead letters) as a child of the
// W3C traceparent in the message's AMQP headers (the apiserver's publish
// span); the handlers below get it in ctx, so mailbox.Dispatch keeps it
// in the command record and the device's mailbox entry, and the log lines
// logged with ctx carry the trace_id.
func tracing() Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) error {
			name := "dispatch"
			if m.Queue == queueCommandsDead {
				name = "dead-letter"
			}
			tp, _ := m.Headers["traceparent"].(string)
			ctx, span := telemetry.Tracer().Start(telemetry.ContextWithTraceParent(ctx, tp), name,
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.system", "rabbitmq"),
					attribute.String("messaging.destination.name", m.Queue),
					attribute.Int("messaging.rabbitmq.delivery_count", m.DeliveryCount)))
			err := next(ctx, m)
			span.SetAttributes(attribute.String("client_id", m.Client), attribute.String("device_id", m.Device),
				attribute.String("msg_id", m.MsgID), attribute.String("outcome", outcomeOf(m, err)))
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
			return err
		}
	}
}

// traceID is the trace ID of the message's traceparent header, "" when
// it has none, for log lines written without the handler's context.
func (m *Message) traceID() string {
	tp, _ := m.Headers["traceparent"].(string)
	return telemetry.TraceIDOf(tp)
}

// logging logs every handled message at debug level, poison at error and
// other failures at warn.
func logging(log *slog.Logger) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *Message) error {
			start := time.Now()
			err := next(ctx, m)
			if err == nil && !log.Enabled(ctx, slog.LevelDebug) {
				return nil
			}
			attrs := []any{
				"queue", m.Queue, "outcome", outcomeOf(m, err),
				"client_id", m.Client, "device_id", m.Device, "msg_id", m.MsgID,
				"delivery_count", m.DeliveryCount, "took", time.Since(start),
			}
			switch {
			case err == nil:
				log.DebugContext(ctx, "message handled", attrs...)
			case errors.Is(err, amqpx.ErrTransient):
				// The consumer logs the hold once at warn; each retry is
				// debug, or an outage would flood the log.
				log.DebugContext(ctx, "message held: dependency unavailable", append(attrs, "err", err)...)
			case errors.Is(err, amqpx.ErrReject):
				log.ErrorContext(ctx, "message rejected to the dead letters", append(attrs, "err", err)...)
			default:
				log.WarnContext(ctx, "message failed, requeued", append(attrs, "err", err)...)
			}
			return err
		}
	}
}

// outcomeOf is the outcome label of a handled message: the handler's own,
// else one derived from its error.
func outcomeOf(m *Message, err error) string {
	switch {
	case m.Outcome == outcomePanic:
		return outcomePanic
	case errors.Is(err, amqpx.ErrTransient):
		return outcomeTransient
	case errors.Is(err, amqpx.ErrReject):
		return outcomePoison
	case err != nil:
		return outcomeError
	case m.Outcome != "":
		return m.Outcome
	}
	return "ok"
}
