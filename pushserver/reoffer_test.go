package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestReoffer: a command the device PUBACKed but did not answer is not
// sent again on that connection when its mailbox is read again from the
// start (a rewind: a second subscription while an entry too large for the
// client was skipped), and is offered again, with the same id, on the
// device's next connection (DESIGN §7a, §8.3); its answer there ends it.
func TestReoffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const device, client = "dev-reoffer", "cli-reoffer"
	e.sendCommand(client, device, "1", n.NodeID())
	e.sendCommand(client, device, `"`+strings.Repeat("l", 120)+`"`, n.NodeID()) // too large for the first connection
	tok := token(t, device, auth.RoleDevice, time.Hour)
	topic := protocol.DeviceCommandsTopic(device)

	first := dialRaw(t, n.Addr(), 5)
	require.NoError(t, first.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: device,
			UsernameFlag: true, Username: []byte(device), PasswordFlag: true, Password: []byte(tok),
		},
		Properties: packets.Properties{MaximumPacketSize: 150},
	}))
	ack, err := first.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, byte(0), ack.ReasonCode)
	first.subscribe(topic, 1)
	pub, err := first.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Publish, pub.FixedHeader.Type)
	require.NoError(t, first.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}))
	eventually(t, 5*time.Second, func() bool { return e.commandStatus(client, "1").Status == protocol.StatusDelivered }, "delivered")

	// The same connection subscribes again: the mailbox is read again, and
	// the delivered command is not sent again.
	unsent := value(t, n.m.unsent)
	first.subscribe(topic, 1)
	// The rewind read the skipped large entry again (and handed it back).
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.unsent) > unsent }, "the mailbox read again from the start")
	if pk, err := first.recv(300 * time.Millisecond); err == nil {
		t.Fatalf("the same connection got packet type %d after the rewind, want nothing", pk.FixedHeader.Type)
	}
	_ = first.conn.Close()
	eventually(t, 5*time.Second, func() bool { return n.current(device) == nil }, "first session gone")

	// A new connection is offered it again, with the same id.
	second := dialRaw(t, n.Addr(), 5)
	require.Equal(t, byte(0), second.connect(device, tok).ReasonCode)
	second.subscribe(topic, 1)
	var again packets.Packet
	for { // the large command comes too, now that the client takes it
		again, err = second.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, again.FixedHeader.Type)
		if string(again.Payload) == string(pub.Payload) {
			break
		}
	}
	require.NoError(t, second.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: again.PacketID}))
	require.NoError(t, second.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    7,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"done","id":"cli-reoffer:1"}`),
	}))
	eventually(t, 5*time.Second, func() bool { return e.commandStatus(client, "1").Status == protocol.StatusSucceeded }, "answered")
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(device) == 1 }, "the answered entry left (the large one waits)")
}

// TestReofferAfterOutage: a command the device PUBACKed but did not
// answer is offered again, once, with the same id, on the same
// connection, when the push server reaches Redis again after an outage
// (DESIGN §7a, "Re-offer"): an answer lost meanwhile is asked for again.
func TestReofferAfterOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var log logBuffer
	n := e.startNode(func(c *Config) {
		c.SweepInterval = 100 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	const device, client = "dev-reoffer-out", "cli-reoffer-out"
	e.sendCommand(client, device, "1", n.NodeID())
	outage := &redisOutage{}
	n.rdb.AddHook(outage)

	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	c.subscribe(protocol.DeviceCommandsTopic(device), 1)
	pub, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Publish, pub.FixedHeader.Type)
	require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}))
	eventually(t, 5*time.Second, func() bool { return e.commandStatus(client, "1").Status == protocol.StatusDelivered }, "delivered")
	require.Equal(t, 0.0, value(t, n.m.reoffers))

	outage.down.Store(true)
	eventually(t, 5*time.Second, func() bool { return strings.Contains(log.String(), "cannot read pending identities") },
		"the outage was not noticed")
	outage.down.Store(false)

	again, err := c.recv(5 * time.Second)
	require.NoError(t, err, "the delivered command was not offered again after the outage")
	require.Equal(t, packets.Publish, again.FixedHeader.Type, "got packet type %d, want PUBLISH", again.FixedHeader.Type)
	require.Equal(t, string(pub.Payload), string(again.Payload), "offered again: got another command, want the same id")
	require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: again.PacketID}))
	require.Equal(t, 1.0, value(t, n.m.reoffers), "re-offers of the one session after one outage")
	require.NoError(t, c.answer(device, 7, `{"jsonrpc":"2.0","result":"done","id":"`+client+`:1"}`))
	eventually(t, 5*time.Second, func() bool { return e.commandStatus(client, "1").Status == protocol.StatusSucceeded }, "answered")
}
