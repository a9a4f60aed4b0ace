package main

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

func TestACLSubscriptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-acl"
	own := protocol.DeviceCommandsTopic(id)
	forbidden := []struct {
		filter string
		qos    byte
	}{
		{"#", 1},
		{"+", 1},
		{"devices/#", 1},
		{"devices/+/commands", 1},
		{"+/dev-acl/commands", 1},
		{"devices/dev-other/commands", 1},
		{"devices/dev-acl/responses", 1},
		{"clients/cli-x/results/+", 1},
		{"clients/+/results/#", 1},
		{"$share/g/devices/dev-acl/commands", 1},
		{"$SYS/#", 1},
		{"$SYS/broker/clients/connected", 1},
		{own, 0}, // QoS 0: a PUBACK is needed to remove an entry
		{own, 2},
	}

	for _, version := range []byte{4, 5} {
		c := dialRaw(t, n.Addr(), version)
		ack := c.connect(id, token(t, id, auth.RoleDevice, time.Hour))
		require.Equal(t, byte(0), ack.ReasonCode)
		want := byte(0x80) // 3.1.1: failure
		if version == 5 {
			want = 0x87 // not authorized
		}
		for _, f := range forbidden {
			sa := c.subscribe(f.filter, f.qos)
			require.Equal(t, []byte{want}, sa.ReasonCodes, "MQTT %d: SUBSCRIBE %q QoS %d", version, f.filter, f.qos)
		}

		// Nothing arrives: not the identity's own entries (no QoS 1
		// subscription), not another's, not $SYS.
		e.put(id, own, "own", n.NodeID())
		e.put("dev-other", protocol.DeviceCommandsTopic("dev-other"), "other", n.NodeID())
		pk, err := c.recv(time.Second)
		require.Error(t, err, "MQTT %d: received %v", version, pk)
		require.Equal(t, int64(1), e.mailboxLen(id))
		_ = c.conn.Close()
		eventually(t, 5*time.Second, func() bool { return n.current(id) == nil }, "session gone")
		ctx := t.Context()
		require.NoError(t, e.rdb.Del(ctx, e.keys(id).Mailbox(id)).Err())
	}
}

func TestPublishRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-pub"
	pub := func(topic string, qos byte, retain bool) packets.Packet {
		var pid uint16
		if qos > 0 {
			pid = 7
		}
		return packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
			TopicName:   topic, PacketID: pid, Payload: []byte(`{"jsonrpc":"2.0","result":1,"id":"cli:1"}`),
		}
	}
	tests := []struct {
		name    string
		version byte
		pk      packets.Packet
		// wantType is the packet the server answers with, 0 when it
		// just closes the connection.
		wantType, wantCode byte
	}{
		{"3.1.1 another device's topic", 4, pub(protocol.DeviceResponsesTopic("dev-x"), 1, false), 0, 0},
		{"3.1.1 commands topic", 4, pub(protocol.DeviceCommandsTopic(id), 1, false), 0, 0},
		{"3.1.1 retained", 4, pub(protocol.DeviceResponsesTopic(id), 1, true), 0, 0},
		{"3.1.1 QoS 2", 4, pub(protocol.DeviceResponsesTopic(id), 2, false), 0, 0},
		{"5 another device's topic", 5, pub(protocol.DeviceResponsesTopic("dev-x"), 1, false), packets.Puback, 0x87},
		{"5 a client's results", 5, pub(protocol.ClientResultsTopic("cli", id), 1, false), packets.Puback, 0x87},
		{"5 retained", 5, pub(protocol.DeviceResponsesTopic(id), 1, true), packets.Disconnect, 0x9A},
		{"5 QoS 2", 5, pub(protocol.DeviceResponsesTopic(id), 2, false), packets.Disconnect, 0x9B},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, n.Addr(), tt.version)
			require.Equal(t, byte(0), c.connect(id, token(t, id, auth.RoleDevice, time.Hour)).ReasonCode)
			require.NoError(t, c.send(tt.pk))
			pk, err := c.recv(3 * time.Second)
			if tt.wantType == 0 {
				require.Error(t, err, "want the connection closed, got %v", pk)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantType, pk.FixedHeader.Type)
			require.Equal(t, tt.wantCode, pk.ReasonCode)
			if tt.wantType == packets.Disconnect {
				_, err := c.recv(3 * time.Second)
				require.Error(t, err, "connection still open after DISCONNECT")
			}
		})
	}
}

// TestWillRefused: a will message would be published by the broker
// without any ACL check, so a CONNECT with a will is refused.
func TestWillRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	for _, version := range []byte{4, 5} {
		c := dialRaw(t, n.Addr(), version)
		require.NoError(t, c.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
				ClientIdentifier: "dev-will",
				UsernameFlag:     true, Username: []byte("dev-will"),
				PasswordFlag: true, Password: []byte(token(t, "dev-will", auth.RoleDevice, time.Hour)),
				WillFlag: true, WillTopic: protocol.ClientResultsTopic("cli-victim", "dev-will"), WillPayload: []byte("forged"),
				WillQos: 1,
			},
		}))
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Connack, pk.FixedHeader.Type)
		want := byte(0x05)
		if version == 5 {
			want = 0x87
		}
		require.Equal(t, want, pk.ReasonCode, "MQTT %d", version)
	}
}
