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

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// forwardResponse handles a PUBLISH of device cl.ID on its responses
// topic. It runs inside mochi's OnPublish, before mochi sends the PUBACK,
// and its result tells mochi what to do:
//
//   - packets.CodeSuccessIgnore: mochi sends the PUBACK (QoS 1) and does
//     not route the message to any subscriber. Returned once the response
//     is confirmed by RabbitMQ (published mandatory to the results
//     exchange, as a result envelope), and for a response that can never
//     succeed (malformed, an id that is not "{client}:{id}", an unknown
//     command, another device's command), which is dropped with a log
//     line and gw_push_responses_dropped_total{reason}.
//   - packets.ErrRejectPacket: mochi sends nothing. Returned when the
//     response could not be made durable (Redis or RabbitMQ unavailable,
//     no confirm within ConfirmTimeout): the connection is closed without
//     a PUBACK, so the device sends the response again.
//
// The whole call is bounded by ConfirmTimeout; it holds up only this
// device's connection.
func (n *Node) forwardResponse(cl *mqtt.Client, pk packets.Packet) error {
	device := cl.ID
	received := time.Now()
	log := n.log.With("device_id", device)

	resp, err := protocol.ParseResponse(pk.Payload)
	if err != nil {
		return n.dropResponse(log, dropMalformed, err)
	}
	var deviceMsgID string
	if err := json.Unmarshal(resp.ID, &deviceMsgID); err != nil {
		return n.dropResponse(log, dropID, fmt.Errorf("id %s is not a string", resp.ID))
	}
	client, id, err := protocol.ParseDeviceMsgID(deviceMsgID)
	if err != nil {
		return n.dropResponse(log, dropID, err)
	}
	log = log.With("client_id", client, "msg_id", id.Key())

	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ConfirmTimeout)
	defer cancel()
	cmd, err := n.store.Get(ctx, client, id.Key())
	switch {
	case errors.Is(err, mailbox.ErrNotFound):
		return n.dropResponse(log, dropUnknown, err)
	case err != nil:
		return n.failResponse(cl, pk, log, fmt.Errorf("cannot look up the command: %w", err))
	case cmd.Device != device:
		return n.dropResponse(log, dropDevice, fmt.Errorf("the command is for device %q", cmd.Device))
	case cmd.Status == protocol.StatusPending || cmd.Status == protocol.StatusQueued:
		// A worker puts a command into the device's mailbox and marks it
		// sent in one script, so a device cannot have received it yet.
		return n.dropResponse(log, dropNotSent, fmt.Errorf("the command is %s: it was never sent", cmd.Status))
	}
	msgID := cmd.ID
	if msgID.IsZero() {
		msgID = id
	}
	env := &protocol.Envelope{
		Kind:       protocol.KindResult,
		Client:     client,
		Device:     device,
		MsgID:      msgID,
		Payload:    json.RawMessage(pk.Payload),
		AcceptedAt: received.UTC().Truncate(time.Millisecond),
	}
	body, err := env.Encode()
	if err != nil {
		return n.dropResponse(log, dropMalformed, err)
	}
	err = n.pub.Publish(ctx, n.topo.ResultsExchange, protocol.RoutingResult, body, amqpx.Headers{
		MessageID: deviceMsgID, Type: protocol.KindResult,
	})
	if err != nil {
		return n.failResponse(cl, pk, log, fmt.Errorf("cannot publish the response: %w", err))
	}
	n.m.responses.Inc()
	log.Debug("device response forwarded")
	return packets.CodeSuccessIgnore
}

// dropResponse counts and logs a response that can never succeed; it is
// still acknowledged.
func (n *Node) dropResponse(log *slog.Logger, reason string, err error) error {
	n.m.dropped.WithLabelValues(reason).Inc()
	log.Warn("device response dropped", "reason", reason, "err", err)
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
	log.Warn("device response not forwarded: closing the connection without PUBACK so that the device resends it", "err", err)
	disconnect(cl, packets.ErrServerBusy, "")
	return packets.ErrRejectPacket
}
