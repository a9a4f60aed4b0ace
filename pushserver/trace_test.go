package main

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// recvPublish reads packets until a PUBLISH, acknowledging it.
func (c *raw) recvPublish(t *testing.T) packets.Packet {
	t.Helper()
	for {
		pk, err := c.recv(10 * time.Second)
		require.NoError(t, err)
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}))
		return pk
	}
}

// traceExchange sends one command with the dispatch's traceparent
// dispatchTP to an MQTT 5 device, which answers with answerTP, and returns
// the traceparents the device and the client received.
func traceExchange(t *testing.T, dispatchTP, answerTP string) (sendTP, deliverTP string) {
	t.Helper()
	e := newEnv(t)
	n := e.startNode()
	const device, client = "dev-trace", "cli-trace"

	cl := dialRaw(t, n.Addr(), 5)
	require.Equal(t, byte(0), cl.connect(client, token(t, client, auth.RoleClient, time.Hour)).ReasonCode)
	cl.subscribe(protocol.ClientResultsFilter(client), 1)
	dev := dialRaw(t, n.Addr(), 5)
	require.Equal(t, byte(0), dev.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	dev.subscribe(protocol.DeviceCommandsTopic(device), 1)

	r := e.queueCommand(client, device, "1")
	env := &protocol.Envelope{
		V: protocol.EnvelopeVersion, Kind: protocol.KindCommand, Client: client, Device: device,
		MsgID: r.ID, Payload: json.RawMessage(`{"jsonrpc":"2.0","method":"reboot","id":1}`),
		AcceptedAt: r.CreatedAt, DeliverBy: r.DeliverBy, AnswerWithinMS: r.Timeout.Milliseconds(), Attempt: 1,
	}
	out, err := e.store.Dispatch(telemetry.ContextWithTraceParent(t.Context(), dispatchTP), env, n.NodeID(), n.NodeID())
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeSent, out)

	sendTP = userProperty(dev.recvPublish(t), "traceparent")
	require.NoError(t, dev.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName:  protocol.DeviceResponsesTopic(device),
		Payload:    []byte(fmt.Sprintf(`{"jsonrpc":"2.0","result":{"ok":true},"id":"%s:1"}`, client)),
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "traceparent", Val: answerTP}}},
	}))
	deliverTP = userProperty(cl.recvPublish(t), "traceparent")
	return sendTP, deliverTP
}

// TestTraceOverMQTT5: with tracing on, the push server's span of the send
// to a device continues the worker's (the mailbox entry's traceparent) and
// reaches an MQTT 5 device as the user property traceparent; the device's
// answer, sent with its own traceparent, is completed in a child span of
// it, the relay's span is the completion's child, and the delivery to the
// MQTT 5 client is the relay's child and carries its traceparent.
func TestTraceOverMQTT5(t *testing.T) {
	// Not parallel: it installs the global tracer provider.
	rec := tracetest.NewSpanRecorder()
	telemetry.UseProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(telemetry.ResetProvider)
	const dispatchTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const answerTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-2222222222222222-01"
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"

	sendTP, deliverTP := traceExchange(t, dispatchTP, answerTP)
	require.Equal(t, traceID, telemetry.TraceIDOf(sendTP), "device got traceparent %q, want one of trace %s", sendTP, traceID)
	require.Equal(t, traceID, telemetry.TraceIDOf(deliverTP), "client got traceparent %q, want one of trace %s", deliverTP, traceID)

	// Every span of the trace, by name, with its parent.
	var spans []sdktrace.ReadOnlySpan
	eventually(t, 5*time.Second, func() bool {
		spans = spans[:0]
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID().String() == traceID {
				spans = append(spans, s)
			}
		}
		return len(spans) >= 4
	}, "4 spans of the trace ended")
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
	}
	parentOf := func(name string) string {
		s, ok := byName[name]
		require.True(t, ok, "no span %q among %d", name, len(spans))
		return s.Parent().SpanID().String()
	}
	spanID := func(name string) string { return byName[name].SpanContext().SpanID().String() }
	require.Equal(t, "00f067aa0ba902b7", parentOf("send"), "send's parent: the dispatch")
	require.Equal(t, sendTP[36:52], spanID("send"), "the device's traceparent is the send span")
	require.Equal(t, "2222222222222222", parentOf("complete"), "complete's parent: the device's answer")
	require.Equal(t, spanID("complete"), parentOf("relay"), "relay's parent: complete")
	require.Equal(t, spanID("relay"), parentOf("deliver"), "deliver's parent: relay")
	require.Equal(t, deliverTP[36:52], spanID("deliver"), "the client's traceparent is the deliver span")
}

// TestTraceOverMQTT5Off: with tracing off the push server records no
// span and passes the traceparents on as they are: the dispatch's to the
// device, the device's answer's (carried by the relay) to the client.
func TestTraceOverMQTT5Off(t *testing.T) {
	const dispatchTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	const answerTP = "00-0af7651916cd43dd8448eb211c80319c-3333333333333333-01"
	require.False(t, telemetry.Enabled(), "tracing is on")
	sendTP, deliverTP := traceExchange(t, dispatchTP, answerTP)
	require.Equal(t, dispatchTP, sendTP, "the device's traceparent")
	require.Equal(t, answerTP, deliverTP, "the client's traceparent")
}
