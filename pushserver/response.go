package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

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
//   - While Redis cannot take the step, it retries every RetryInterval
//     for up to AnswerGrace, holding the PUBACK (and this connection's
//     reads); it never closes the connection to make the device resend.
//     Only when the partition stays unreachable past the grace is the
//     answer refused (no PUBACK, the connection closed), and counted.
func (n *Node) forwardResponse(cl *mqtt.Client, pk packets.Packet) error {
	device := cl.ID
	read := time.Now()
	log := n.log.With("device_id", device)

	resp, err := protocol.ParseResponse(pk.Payload)
	if err != nil {
		return n.dropResponse(log, dropMalformed, err)
	}
	var deviceMsgID string
	if err := json.Unmarshal(resp.ID, &deviceMsgID); err != nil {
		return n.dropResponse(log, dropID, fmt.Errorf("id %s is not a string", telemetry.Clip(string(resp.ID))))
	}
	client, id, err := protocol.ParseDeviceMsgID(deviceMsgID)
	if err != nil {
		return n.dropResponse(log, dropID, err)
	}
	log = log.With("client_id", telemetry.Clip(client), "msg_id", telemetry.Clip(id.Key()))

	grace := n.cfg.AnswerGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	retry := 250 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ConfirmTimeout)
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
			log.Debug("device response completed", "outcome", out)
			return packets.CodeSuccessIgnore
		}
		if n.ctx.Err() != nil || time.Since(read) > grace {
			return n.failResponse(cl, pk, log, fmt.Errorf("cannot complete the answer: %w", err))
		}
		log.Warn("cannot complete the answer yet; holding its PUBACK and retrying", "err", err)
		select {
		case <-n.ctx.Done():
		case <-time.After(retry):
		}
	}
}

// dropResponse counts and logs a response that can never succeed; it is
// still acknowledged.
func (n *Node) dropResponse(log *slog.Logger, reason string, err error) error {
	n.m.dropped.WithLabelValues(reason).Inc()
	log.Warn("device response dropped", "reason", reason, "err", telemetry.Clip(err.Error()))
	return packets.CodeSuccessIgnore
}

// failResponse handles a response that could not be made durable: a QoS 1
// one is not acknowledged and its connection is closed, so that the
// device resends it; a QoS 0 one is lost (and counted).
func (n *Node) failResponse(cl *mqtt.Client, pk packets.Packet, log *slog.Logger, err error) error {
	if pk.FixedHeader.Qos == 0 {
		n.m.dropped.WithLabelValues(dropUnsent).Inc()
		log.Warn("QoS 0 device response lost", "err", err)
		return packets.ErrRejectPacket
	}
	log.Warn("device response not completed within the answer grace: closing the connection without PUBACK", "err", err)
	disconnect(cl, packets.ErrServerBusy, "")
	return packets.ErrRejectPacket
}
