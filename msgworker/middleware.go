package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/iotgw/gateway/internal/amqpx"
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
					log.Error("handler panicked", "queue", m.Queue, "panic", r, "stack", string(debug.Stack()))
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
				log.Debug("message handled", attrs...)
			case errors.Is(err, amqpx.ErrTransient):
				// The consumer logs the hold once at warn; each retry is
				// debug, or an outage would flood the log.
				log.Debug("message held: dependency unavailable", append(attrs, "err", err)...)
			case errors.Is(err, amqpx.ErrReject):
				log.Error("message rejected to the dead letters", append(attrs, "err", err)...)
			default:
				log.Warn("message failed, requeued", append(attrs, "err", err)...)
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
