package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// forwardResponse handles a PUBLISH of device cl.ID on its responses
// topic: the push server that reads a device's answer completes it
// (DESIGN §5, "the edge completes them"). It runs the completion step in
// the device's partition (mailbox.Complete, with held = the time since
// the answer was read, so that a timeout is decided by when the answer
// reached the edge) and only then lets the PUBACK go:
//
//   - packets.CodeSuccessIgnore: mochi sends the PUBACK (QoS 1) and does
//     not route the message to any subscriber. Returned once the step is
//     done (succeeded, failed, a late or duplicate answer recorded), and
//     for a response that can never succeed (malformed, an id that is not
//     "{client}:{id}", an unknown command, another device's command, one
//     never sent), which is dropped with a log line and
//     gw_push_responses_dropped_total{reason}.
//   - While Redis cannot take the step, it retries (at least every
//     AnswerGrace/4), holding the PUBACK (and this connection's reads) for
//     as long as the device stays connected; it never closes the
//     connection to make the device resend. An answer whose connection
//     ends (or whose node stops) first is not acknowledged, and counted
//     (gw_push_answers_abandoned_total{cause}).
func (n *Node) forwardResponse(cl *mqtt.Client, pk packets.Packet) error {
	device := cl.ID
	read := time.Now()
	log := n.log.With("device_id", device)

	resp, err := protocol.ParseResponse(pk.Payload)
	if err != nil {
		return n.dropResponse(log, dropMalformed, err)
	}
	client, id, err := protocol.AnswerTarget(resp)
	if err != nil {
		return n.dropResponse(log, dropID, err)
	}
	log = log.With("client_id", telemetry.Clip(client), "msg_id", telemetry.Clip(id.Key()))
	// An MQTT 5 device that continues the command's trace sends the
	// traceparent of its answer as a user property: the completion's span
	// is its child, and the result's relay continues it. Without one the
	// record's trace goes on (mailbox.Complete), with no span here.
	base := n.ctx
	if tp := userProperty(pk, "traceparent"); tp != "" {
		var span trace.Span
		base, span = telemetry.Tracer().Start(telemetry.ContextWithTraceParent(n.ctx, tp), "complete",
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
				attribute.String("device_id", device), attribute.String("client_id", client),
				attribute.String("msg_id", id.Key()), attribute.String("node", n.cfg.NodeID)))
		defer span.End()
		if tid := telemetry.TraceID(base); tid != "" {
			log = log.With(telemetry.KeyTraceID, tid)
		}
	}

	grace := n.cfg.AnswerGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	// While the partition cannot take the step, the PUBACK is held and the
	// step retried at least every grace/4 (DESIGN §7a), for as long as the
	// device stays connected: the gateway never closes a connection to
	// make a device resend (a clean-session device would not), and the
	// step decides a timeout by when the answer was read (held), not by
	// how long this took.
	retry, maxRetry := 100*time.Millisecond, min(2*time.Second, grace/4)
	var held time.Time // when the first attempt failed
	for {
		ctx, cancel := context.WithTimeout(base, n.cfg.ConfirmTimeout)
		out, err := n.store.Complete(ctx, client, id.Key(), device, resp, time.Since(read), "")
		cancel()
		if err == nil {
			switch out {
			case mailbox.OutcomeUnknown, mailbox.OutcomeNoop:
				return n.dropResponse(log, dropUnknown, errors.New("no command of this device waits for this answer"))
			case mailbox.OutcomeOtherDevice:
				return n.dropResponse(log, dropDevice, errors.New("the command is another device's"))
			case mailbox.OutcomeNotSent:
				return n.dropResponse(log, dropNotSent, errors.New("the command was not sent yet"))
			}
			n.m.responses.Inc()
			if !held.IsZero() {
				log.Info("held device response completed", "held", time.Since(held).Round(time.Millisecond), "outcome", out)
			}
			log.Debug("device response completed", "outcome", out)
			return packets.CodeSuccessIgnore
		}
		switch {
		case pk.FixedHeader.Qos == 0 && time.Since(read) > grace:
			// No PUBACK to hold: the answer is lost, and counted.
			n.m.dropped.WithLabelValues(dropUnsent).Inc()
			log.Warn("QoS 0 device response lost", "err", err)
			return packets.ErrRejectPacket
		case n.ctx.Err() != nil:
			n.m.abandoned.WithLabelValues("shutdown").Inc()
			log.Warn("device response not completed before shutdown: not acknowledged", "err", err)
			return packets.ErrRejectPacket
		case cl.Closed():
			n.m.abandoned.WithLabelValues("connection_closed").Inc()
			log.Warn("device response not completed before its connection ended: not acknowledged", "err", err)
			return packets.ErrRejectPacket
		}
		if held.IsZero() {
			held = time.Now()
			log.Warn("cannot complete the answer yet; holding its PUBACK and retrying", "err", err)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(retry):
		}
		retry = min(2*retry, maxRetry)
	}
}

// userProperty is the value of the MQTT 5 user property key of pk, "" when
// it has none.
func userProperty(pk packets.Packet, key string) string {
	for _, p := range pk.Properties.User {
		if p.Key == key {
			return p.Val
		}
	}
	return ""
}

// dropResponse counts and logs a response that can never succeed; it is
// still acknowledged.
func (n *Node) dropResponse(log *slog.Logger, reason string, err error) error {
	n.m.dropped.WithLabelValues(reason).Inc()
	log.Warn("device response dropped", "reason", reason, "err", telemetry.Clip(err.Error()))
	return packets.CodeSuccessIgnore
}
