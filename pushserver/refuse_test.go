package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestDeviceRefusesCommand: an MQTT 5 device that answers a command's
// PUBLISH with PUBACK 0x87 (not authorized) refuses it: the command ends
// rejected, not delivered, and its client gets -32005 with the reason
// code. An MQTT 3.1.1 device's PUBACK (no reason code) delivers as ever.
func TestDeviceRefusesCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const client = "cli-refuse"
	for _, tt := range []struct {
		device string
		v      byte
		code   byte
		want   protocol.Status
	}{
		{"dev-refuse-5", 5, packets.ErrNotAuthorized.Code, protocol.StatusRejected},
		{"dev-refuse-5-ok", 5, packets.CodeSuccess.Code, protocol.StatusDelivered},
		{"dev-refuse-3", 4, 0, protocol.StatusDelivered},
	} {
		rawID := `"` + tt.device + `"`
		e.sendCommand(client, tt.device, rawID, n.NodeID())
		d := dialRaw(t, n.Addr(), tt.v)
		require.Equal(t, byte(0), d.connect(tt.device, token(t, tt.device, auth.RoleDevice, time.Hour)).ReasonCode)
		d.subscribe(protocol.DeviceCommandsTopic(tt.device), 1)
		pub, err := d.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, pub.FixedHeader.Type)
		require.NoError(t, d.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pub.PacketID,
			ReasonCode:  tt.code,
		}))
		eventually(t, 5*time.Second, func() bool {
			return e.commandStatus(client, idKey(t, rawID)).Status == tt.want
		}, "%s: command %s", tt.device, tt.want)
		// A refused command leaves the mailbox; a delivered one stays
		// until it is final (offered again to the next connection).
		wantLen := int64(0)
		if tt.want == protocol.StatusDelivered {
			wantLen = 1
		}
		eventually(t, 5*time.Second, func() bool { return e.mailboxLen(tt.device) == wantLen }, "%s: mailbox holds %d", tt.device, wantLen)
	}
	require.Equal(t, 1.0, value(t, n.m.refusals.WithLabelValues("rejected")))

	// The client gets exactly the one rejected result: -32005 with the
	// reason code.
	c := dialRaw(t, n.Addr(), 5)
	require.Equal(t, byte(0), c.connect(client, token(t, client, auth.RoleClient, time.Hour)).ReasonCode)
	c.subscribe(protocol.ClientResultsTopic(client, "dev-refuse-5"), 1)
	pub, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Publish, pub.FixedHeader.Type)
	resp, err := protocol.ParseResponse(pub.Payload)
	require.NoError(t, err, "%s", pub.Payload)
	require.NotNil(t, resp.Error, "%s", pub.Payload)
	require.Equal(t, protocol.CodeRejected, resp.Error.Code)
	require.JSONEq(t, `"dev-refuse-5"`, string(resp.ID))
	var data map[string]any
	require.NoError(t, json.Unmarshal(resp.Error.Data, &data))
	require.Equal(t, map[string]any{"source": "gateway", "status": "rejected", "mqtt_reason_code": float64(0x87)}, data)
	rec := e.commandStatus(client, idKey(t, `"dev-refuse-5"`))
	require.True(t, rec.DeliveredAt.IsZero(), "a refused command was never delivered")
}
