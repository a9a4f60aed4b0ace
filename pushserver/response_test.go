package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// queueCommand creates a command of client to device the way the
// apiserver would (reserve, queued), and returns its record.
func (e *env) queueCommand(client, device, rawID string) *mailbox.Command {
	e.t.Helper()
	ctx := e.t.Context()
	id, err := protocol.ParseID(json.RawMessage(rawID))
	require.NoError(e.t, err)
	const timeout, expiresIn = 30 * time.Second, time.Hour
	c := &mailbox.Command{
		Client: client, Device: device, ID: id, Method: "reboot",
		Timeout: timeout, ExpiresIn: expiresIn,
		Fingerprint: protocol.Fingerprint(device, "reboot", nil, timeout, expiresIn),
	}
	out, rec, err := e.store.Reserve(ctx, c)
	require.NoError(e.t, err)
	require.Equal(e.t, mailbox.Reserved, out)
	require.NoError(e.t, e.store.MarkQueued(ctx, client, id.Key(), rec.LeaseToken))
	return rec
}

// sendCommand creates a command of client to device the way the apiserver
// and a worker would (reserve, queued, dispatch into the device's
// mailbox), signalling node.
func (e *env) sendCommand(client, device, rawID, node string) *mailbox.Command {
	e.t.Helper()
	ctx := e.t.Context()
	rec := e.queueCommand(client, device, rawID)
	id := rec.ID
	timeout := rec.Timeout
	env := &protocol.Envelope{
		V: protocol.EnvelopeVersion, Kind: protocol.KindCommand, Client: client, Device: device,
		MsgID: id, Payload: json.RawMessage(fmt.Sprintf(`{"jsonrpc":"2.0","method":"reboot","id":%s}`, rawID)),
		AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy, AnswerWithinMS: timeout.Milliseconds(), Attempt: 1,
	}
	outcome, err := e.store.Dispatch(ctx, env, node, node)
	require.NoError(e.t, err)
	require.Equal(e.t, mailbox.OutcomeSent, outcome)
	got, err := e.store.Get(ctx, client, id.Key())
	require.NoError(e.t, err)
	return got
}

// resultsChannel returns an AMQP channel and the results queue's name.
func (e *env) resultsChannel() (*amqp.Channel, string) {
	e.t.Helper()
	conn := testenv.AMQP(e.t)
	ch, err := conn.Channel()
	require.NoError(e.t, err)
	return ch, protocol.NewTopology(e.ns).ResultsQueue
}

// TestDeviceResponse: a device's response reaches the results queue
// before the device gets its PUBACK; responses that can never succeed
// are dropped, counted and still acknowledged.
func TestDeviceResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const device, client = "dev-resp", "cli-resp"
	cmd := e.sendCommand(client, device, "42", n.NodeID())
	e.sendCommand(client, "dev-other", `"x-1"`, n.NodeID())
	e.queueCommand(client, device, "43") // accepted, not yet sent
	ch, queue := e.resultsChannel()

	c := mustV3(t, n.Addr(), device)
	col := newCollector()
	c.subscribe(t, protocol.DeviceCommandsTopic(device), 1, col)
	col.waitDistinct(t, 1, 5*time.Second)
	var req struct {
		Method string `json:"method"`
		ID     string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(col.list()[0]), &req))
	require.Equal(t, "reboot", req.Method)
	require.Equal(t, client+":42", req.ID)
	eventually(t, 5*time.Second, func() bool {
		got, err := e.store.Get(t.Context(), client, "42")
		return err == nil && got.Status == protocol.StatusDelivered
	}, "command delivered after PUBACK")

	publish := func(payload string) {
		t.Helper()
		tok := c.Publish(protocol.DeviceResponsesTopic(device), 1, false, payload)
		require.True(t, tok.WaitTimeout(10*time.Second), "no PUBACK for %s", payload)
		require.NoError(t, tok.Error())
	}

	resp := fmt.Sprintf(`{"jsonrpc":"2.0","result":{"ok":true},"id":%q}`, req.ID)
	publish(resp)
	// The PUBACK came: the result is in the queue already.
	msg, ok, err := ch.Get(queue, true)
	require.NoError(t, err)
	require.True(t, ok, "result not in %s when the PUBACK arrived", queue)
	env, err := protocol.DecodeEnvelope(msg.Body)
	require.NoError(t, err)
	require.Equal(t, protocol.KindResult, env.Kind)
	require.Equal(t, client, env.Client)
	require.Equal(t, device, env.Device)
	require.Equal(t, cmd.ID.Key(), env.MsgID.Key())
	require.JSONEq(t, resp, string(env.Payload))
	require.WithinDuration(t, time.Now(), env.AcceptedAt, 10*time.Second)
	require.Equal(t, amqp.Persistent, msg.DeliveryMode)
	require.Equal(t, float64(1), value(t, n.m.responses))

	dropped := []struct{ payload, reason string }{
		{`not json`, dropMalformed},
		{`{"jsonrpc":"2.0","id":"cli-resp:42"}`, dropMalformed},
		{`{"jsonrpc":"2.0","result":1,"id":42}`, dropID},
		{`{"jsonrpc":"2.0","result":1,"id":"no-colon"}`, dropID},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:999"}`, dropUnknown},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:x-1"}`, dropDevice},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:43"}`, dropNotSent},
	}
	for _, d := range dropped {
		before := value(t, n.m.dropped.WithLabelValues(d.reason))
		publish(d.payload)
		require.Equal(t, before+1, value(t, n.m.dropped.WithLabelValues(d.reason)), "%s", d.payload)
	}
	_, ok, err = ch.Get(queue, true)
	require.NoError(t, err)
	require.False(t, ok, "a dropped response reached the results queue")
	require.Equal(t, float64(1), value(t, n.m.responses))
	require.True(t, c.IsConnectionOpen())
}

// TestResponseNotAckedUntilDurable: when the response cannot be made
// durable (here: no queue takes it), the device gets no PUBACK and its
// connection is closed; sent again later, it goes through.
func TestResponseNotAckedUntilDurable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.ConfirmTimeout = 2 * time.Second })
	const device, client = "dev-dur", "cli-dur"
	e.sendCommand(client, device, "7", n.NodeID())
	ch, queue := e.resultsChannel()
	_, err := ch.QueueDelete(queue, false, false, false)
	require.NoError(t, err)

	response := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    9,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"done","id":"cli-dur:7"}`),
	}
	for _, version := range []byte{4, 5} {
		c := dialRaw(t, n.Addr(), version)
		require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
		require.NoError(t, c.send(response))
		for {
			pk, err := c.recv(5 * time.Second)
			if err != nil {
				var ne net.Error
				require.False(t, errors.As(err, &ne) && ne.Timeout(), "MQTT %d: connection left open", version)
				break // closed without PUBACK
			}
			require.NotEqual(t, packets.Puback, pk.FixedHeader.Type, "PUBACK for a response no queue took")
			require.Equal(t, packets.Disconnect, pk.FixedHeader.Type)
			require.Equal(t, byte(0x89), pk.ReasonCode) // server busy
		}
	}

	require.NoError(t, amqpx.Declare(ch, protocol.NewTopology(e.ns)))
	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	response.FixedHeader.Dup = true
	require.NoError(t, c.send(response))
	pk, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Puback, pk.FixedHeader.Type)
	require.Equal(t, uint16(9), pk.PacketID)
	_, ok, err := ch.Get(queue, true)
	require.NoError(t, err)
	require.True(t, ok, "result not in the queue")
}
