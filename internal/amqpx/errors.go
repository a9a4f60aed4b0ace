package amqpx

import (
	"errors"
	"strings"
)

// Sentinel errors. Every error returned by [Publisher.Publish] is an
// [*Error] that wraps one of them, so callers test with errors.Is.
var (
	// ErrNotConnected means the Publisher has no usable connection or
	// channel right now; it is reconnecting in the background.
	ErrNotConnected = errors.New("amqpx: not connected")
	// ErrBlocked means RabbitMQ blocked the connection (connection.blocked,
	// a memory or disk alarm): it accepts no publishes until the alarm
	// clears.
	ErrBlocked = errors.New("amqpx: connection blocked")
	// ErrNacked means the broker answered the publish with basic.nack: it
	// did not take responsibility for the message (for example x-overflow
	// reject-publish on a full queue).
	ErrNacked = errors.New("amqpx: publish nacked")
	// ErrReturned means the broker returned the mandatory message
	// (basic.return): no queue took it.
	ErrReturned = errors.New("amqpx: publish returned unroutable")
	// ErrConfirmTimeout means no confirm arrived within
	// Options.ConfirmTimeout. The message may or may not have been
	// enqueued.
	ErrConfirmTimeout = errors.New("amqpx: confirm timeout")
	// ErrChannelClosed means the channel or connection closed before the
	// confirm arrived. The message may or may not have been enqueued.
	ErrChannelClosed = errors.New("amqpx: channel closed")
	// ErrClosed means Close was called on the Publisher.
	ErrClosed = errors.New("amqpx: closed")
	// ErrCounts means the namespace's fence refused this process: the
	// namespace was first declared with another GW_QUEUES or
	// GW_PARTITIONS (see Declare). Retrying does not help; the process
	// must not run with these counts.
	ErrCounts = errors.New("amqpx: refused by the namespace's fence")
)

// Handler outcomes understood by a [Consumer]. A handler wraps one of them
// in the error it returns (fmt.Errorf("bad envelope: %w", amqpx.ErrReject)).
var (
	// ErrReject tells the Consumer to reject the delivery without requeue:
	// the queue dead-letters it at once. Use it for messages that can never
	// succeed (unparsable body, unknown version).
	ErrReject = errors.New("amqpx: reject")
	// ErrTransient tells the Consumer that a dependency is down (Redis
	// unreachable): the message is fine, the time is wrong. The Consumer
	// keeps the delivery unacked on its open channel (so the quorum
	// queue's delivery count does not grow), stops dispatching new
	// deliveries (handlers already running go on), and calls the handler
	// again for the same delivery after a backoff (Options.MinBackoff
	// doubling up to Options.MaxBackoff) until it returns something else,
	// which then settles the delivery as usual. After
	// ConsumerOptions.MaxTransientHold, at shutdown, or when the channel is
	// lost, the delivery goes back to the queue (nack with requeue, or the
	// channel's close), which counts as one delivery attempt.
	ErrTransient = errors.New("amqpx: transient failure")
)

// Error is the error of an AMQP operation, with what a caller needs to
// decide on a retry. Err wraps one of the sentinel errors of this package
// (and the underlying cause, if any), so errors.Is(err, ErrReturned) works.
type Error struct {
	Op      string // "publish", "confirm", "connect", "declare"
	Reason  string // "not connected", "blocked", "nack", "returned", "confirm timeout", "channel closed", "closed", "cancelled", "counts differ", "bad topology"
	Recover bool   // true when the same operation may succeed if retried later
	Err     error
}

// Error returns "amqpx: <op>: <reason>: <err>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("amqpx: ")
	b.WriteString(e.Op)
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if e.Err != nil {
		msg := strings.TrimPrefix(e.Err.Error(), "amqpx: ")
		if msg != e.Reason {
			b.WriteString(": ")
			b.WriteString(msg)
		}
	}
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }
