package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Queue labels: the queue names without the namespace.
const (
	queueCommands     = "commands"
	queueCommandsDead = "commands.dead"
)

// handleCommand moves one command from the commands queue into its
// device's mailbox: exactly one mailbox.Dispatch per delivery. The script
// decides (queued → sent, or expired when deliver-by has passed, or
// rejected when the device's mailbox is full; any other status → noop), so
// a redelivery after a crash between the script and the ack is a noop and
// a command never enters a device mailbox twice.
func (w *Worker) handleCommand(ctx context.Context, m *Message) error {
	env, err := protocol.DecodeEnvelope(m.Body)
	if err != nil && protocol.EnvelopeKind(m.Body) == protocol.KindGroup {
		return w.handleGroup(ctx, m)
	}
	if err == nil && env.Kind != protocol.KindCommand {
		err = fmt.Errorf("kind %q on the commands queue", env.Kind)
	}
	if err != nil {
		m.Outcome = outcomePoison
		return fmt.Errorf("%w: cannot decode command: %w", amqpx.ErrReject, err)
	}
	m.Client, m.Device, m.MsgID = env.Client, env.Device, env.MsgID.Key()
	out, err := w.store.Dispatch(ctx, env, w.ownerOf(env.Device), w.ownerOf(env.Client))
	switch {
	case err == nil:
		m.Outcome = string(out)
		return nil
	case errors.Is(err, mailbox.ErrFull):
		m.Outcome = string(mailbox.OutcomeRejected)
		return nil
	case errors.Is(err, protocol.ErrEnvelope):
		// The payload is JSON but not a request the device can get.
		m.Outcome = outcomePoison
		return fmt.Errorf("%w: %w", amqpx.ErrReject, err)
	}
	return w.settle(m, "dispatch", err)
}

// handleGroup creates the children of a group command (issue 14) from
// its envelope: mailbox.RunGroup claims, reserves and dispatches one
// child per device at the group's rate, and the delivery is acked once
// every child exists. A redelivery (after a crash) resumes at the
// group's release cursor; a group whose record is gone (its retention
// ran out) is acked with a warning.
func (w *Worker) handleGroup(ctx context.Context, m *Message) error {
	env, err := protocol.DecodeGroupEnvelope(m.Body)
	if err != nil {
		m.Outcome = outcomePoison
		return fmt.Errorf("%w: cannot decode group command: %w", amqpx.ErrReject, err)
	}
	m.Client, m.MsgID = env.Client, env.MsgID.Key()
	key := env.MsgID.Key()
	if err := w.store.MarkGroupQueued(ctx, env.Client, key); err != nil {
		return w.settle(m, "mark group queued", err)
	}
	w.mx.groups.Inc()
	if err := w.store.RunGroup(ctx, env.Client, key, env.TraceParent); err != nil {
		return w.settle(m, "create the children of a group command", err)
	}
	m.Outcome = "group_released"
	return nil
}

// handleDeadCommand ends a dead-lettered command as dead: the client gets
// -32003 with the reason RabbitMQ gave (x-first-death-reason: "rejected"
// for poison, "delivery_limit" after protocol.DeliveryLimit failed
// attempts). A body that does not decode as an envelope is read leniently
// for its client and msg_id; a dead letter that names no command is logged
// and acked.
//
// A command that is already sent or delivered is left alone: its Dispatch
// did succeed (only the acks failed, say the worker crashed after the
// script every time), it is in the device's mailbox or on the device, and
// it ends normally, by the device's answer or by its timers.
func (w *Worker) handleDeadCommand(ctx context.Context, m *Message) (err error) {
	defer w.countDead(m, &err)
	reason := deathReason(m.Headers)
	client, key, ok := commandOf(m.Body)
	if !ok {
		m.Outcome = outcomeLogged
		w.log.ErrorContext(ctx, "dead command names no command; dropped", "reason", reason,
			"bytes", len(m.Body), "body", preview(m.Body))
		return nil
	}
	m.Client, m.MsgID = client, key
	c, err := w.store.Get(ctx, client, key)
	switch {
	case errors.Is(err, mailbox.ErrNotFound):
		m.Outcome = outcomeUnknown
		w.log.WarnContext(ctx, "dead command has no record; dropped", "client_id", client, "msg_id", key, "reason", reason)
		return nil
	case err != nil:
		return w.settleDead(m, "read dead command", err)
	case c.Status == protocol.StatusSent || c.Status == protocol.StatusDelivered:
		m.Device, m.Outcome = c.Device, string(mailbox.OutcomeNoop)
		w.log.WarnContext(ctx, "dead command was dispatched already; left to finish", "client_id", client,
			"device_id", c.Device, "msg_id", key, "status", c.Status, "reason", reason)
		return nil
	}
	m.Device = c.Device
	out, err := w.store.MarkDead(ctx, c.Device, client, key, reason, w.ownerOf(client))
	if err != nil {
		return w.settleDead(m, "mark dead", err)
	}
	m.Outcome = string(out)
	w.log.WarnContext(ctx, "command dead", "client_id", client, "device_id", c.Device, "msg_id", key, "reason", reason, "outcome", out)
	return nil
}

// countDead counts a dead letter once it is consumed (acked), whatever
// the retries before.
func (w *Worker) countDead(m *Message, err *error) {
	if *err == nil {
		w.mx.deadLetters.WithLabelValues(m.Queue).Inc()
	}
}

// settle turns a mailbox error into the message's fate: a command that
// does not exist (its record expired, or its publish was released) or
// that conflicts with another is acked, since no retry can change it;
// Redis being unavailable is transient (the consumer holds the delivery
// and retries it without burning the delivery limit); anything else is
// nacked with requeue, and reaches the dead letters if it never succeeds.
func (w *Worker) settle(m *Message, op string, err error) error {
	switch {
	case errors.Is(err, mailbox.ErrNotFound):
		m.Outcome = outcomeUnknown
		w.log.Warn("no such command; acked", "op", op, "client_id", m.Client, "device_id", m.Device, "msg_id", m.MsgID,
			telemetry.KeyTraceID, m.traceID())
		return nil
	case errors.Is(err, mailbox.ErrConflict):
		m.Outcome = outcomeConflict
		w.log.Warn("message conflicts with the command record; acked", "op", op,
			"client_id", m.Client, "device_id", m.Device, "msg_id", m.MsgID, telemetry.KeyTraceID, m.traceID(), "err", err)
		return nil
	case errors.Is(err, mailbox.ErrState):
		m.Outcome = string(mailbox.OutcomeNoop)
		return nil
	case isTransient(err):
		return fmt.Errorf("%w: cannot %s: %w", amqpx.ErrTransient, op, err)
	}
	return fmt.Errorf("cannot %s: %w", op, err)
}

// settleDead is settle for the dead-letter queue. It has no delivery
// limit, so a failure that is not transient is retried until the
// delivery count reaches protocol.DeliveryLimit; then the dead letter is
// dropped with an error log rather than redelivered forever.
func (w *Worker) settleDead(m *Message, op string, err error) error {
	err = w.settle(m, op, err)
	if err == nil || errors.Is(err, amqpx.ErrTransient) || m.DeliveryCount < protocol.DeliveryLimit {
		return err
	}
	m.Outcome = outcomeDropped
	w.log.Error("dead letter keeps failing; dropped", "queue", m.Queue, "client_id", m.Client,
		"device_id", m.Device, "msg_id", m.MsgID, telemetry.KeyTraceID, m.traceID(), "delivery_count", m.DeliveryCount, "err", err,
		"body", preview(m.Body))
	return nil
}

// isTransient reports whether err means that Redis is unavailable for now
// (the network: refused, reset or closed connections, timeouts, a closed
// or exhausted pool; or a server that is loading, read-only after a
// failover, busy or out of memory), as opposed to an answer that will be
// the same next time (a script error), which is not.
func isTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		// MISCONF: Redis refuses writes after a failed save or AOF write
		// (until the disk is fixed); it is an outage, not a poison message.
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN",
			"NOREPLICAS", "OOM", "MISCONF", "ERR max number of clients reached"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
	}
	return false
}

// deathReason is why RabbitMQ dead-lettered a message: the
// x-first-death-reason header, else the reason of the first x-death
// entry, with the queue it died in.
func deathReason(h amqp.Table) string {
	reason, _ := h["x-first-death-reason"].(string)
	queue, _ := h["x-first-death-queue"].(string)
	if reason == "" {
		if deaths, ok := h["x-death"].([]any); ok && len(deaths) > 0 {
			if d, ok := deaths[0].(amqp.Table); ok {
				reason, _ = d["reason"].(string)
				queue, _ = d["queue"].(string)
			}
		}
	}
	if reason == "" {
		reason = "unknown"
	}
	if queue != "" {
		reason += " in " + queue
	}
	return reason
}

// commandOf names the command of a dead command's body: from the envelope
// when it decodes, else from its client and msg_id fields when those are
// valid (a command whose payload is broken still has a record to end).
func commandOf(body []byte) (client, idKey string, ok bool) {
	if env, err := protocol.DecodeEnvelope(body); err == nil {
		return env.Client, env.MsgID.Key(), true
	}
	var v struct {
		Client string          `json:"client"`
		MsgID  json.RawMessage `json:"msg_id"`
	}
	if json.Unmarshal(body, &v) != nil || !protocol.ValidIdentity(v.Client) {
		return "", "", false
	}
	id, err := protocol.ParseID(v.MsgID)
	if err != nil {
		return "", "", false
	}
	return v.Client, id.Key(), true
}

// preview returns the start of a body for a log line.
func preview(b []byte) string {
	const max = 256
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
