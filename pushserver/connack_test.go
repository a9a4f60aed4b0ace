package main

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
)

// TestConnackCode: every reason the push server refuses a connection for
// has an MQTT 3.1.1 return code (0x01 to 0x05), or none (the connection
// is closed without a CONNACK); MQTT 5 clients get the reason code
// itself.
func TestConnackCode(t *testing.T) {
	tests := []struct {
		name   string
		code   packets.Code
		v3     byte // 0: no CONNACK
		closed bool
	}{
		{"bad credentials", refuseBadCredentials, 0x04, false},
		{"client ID", refuseClientID, 0x02, false},
		{"not authorized (will)", refuseNotAuthorized, 0x05, false},
		{"unavailable", refuseUnavailable, 0x03, false},
		{"use another server", refuseUseAnother, 0x03, false},
		{"max clients", packets.ErrServerBusy, 0x03, false},
		{"unsupported version", packets.ErrUnsupportedProtocolVersion, 0x01, false},
		{"protocol version", packets.ErrProtocolViolationProtocolVersion, 0x01, false},
		{"will retain", packets.ErrRetainNotSupported, 0x05, false},
		{"will QoS", packets.ErrQosNotSupported, 0x05, false},
		{"unspecified", packets.ErrUnspecifiedError, 0x03, false},
		{"quota", packets.ErrQuotaExceeded, 0x03, false},
		{"protocol name", packets.ErrProtocolViolationProtocolName, 0, true},
		{"flag without password", packets.ErrProtocolViolationFlagNoPassword, 0, true},
		{"malformed", packets.ErrMalformedPacket, 0, true},
		{"success", packets.CodeSuccess, 0x00, false},
	}
	for _, tt := range tests {
		for _, v := range []byte{3, 4} {
			got, ok := connackCode(v, tt.code)
			if ok == tt.closed || (ok && got.Code != tt.v3) {
				t.Errorf("connackCode(%d, %s 0x%02X) = 0x%02X, %v; want 0x%02X, %v", v, tt.name, tt.code.Code, got.Code, ok, tt.v3, !tt.closed)
			}
			if ok && got.Code > 0x05 {
				t.Errorf("connackCode(%d, %s) = 0x%02X, not an MQTT 3.1.1 return code", v, tt.name, got.Code)
			}
		}
		if got, ok := connackCode(5, tt.code); !ok || got != tt.code {
			t.Errorf("connackCode(5, %s) = 0x%02X, %v; want 0x%02X, true", tt.name, got.Code, ok, tt.code.Code)
		}
	}
}

// TestConnackCodesOnTheWire: a raw client of each version is refused for
// each reason with its version's code; an MQTT 3.1.1 client never gets an
// MQTT 5 code, and a malformed 3.1.1 CONNECT gets no CONNACK at all.
func TestConnackCodesOnTheWire(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-connack"
	good := token(t, id, auth.RoleDevice, time.Hour)
	connect := func(mod func(*packets.ConnectParams)) packets.ConnectParams {
		p := packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(good),
		}
		mod(&p)
		return p
	}
	will := func(p *packets.ConnectParams) {
		p.WillFlag, p.WillTopic, p.WillPayload, p.WillQos = true, "devices/"+id+"/responses", []byte("x"), 1
	}
	tests := []struct {
		name   string
		v      byte
		params packets.ConnectParams
		want   byte // the CONNACK's code
		none   bool // no CONNACK: the connection is closed
	}{
		{"bad token", 4, connect(func(p *packets.ConnectParams) { p.Password = []byte("nope") }), 0x04, false},
		{"bad token", 5, connect(func(p *packets.ConnectParams) { p.Password = []byte("nope") }), 0x86, false},
		{"client ID", 4, connect(func(p *packets.ConnectParams) { p.ClientIdentifier = "other" }), 0x02, false},
		{"client ID", 5, connect(func(p *packets.ConnectParams) { p.ClientIdentifier = "other" }), 0x85, false},
		{"will", 4, connect(will), 0x05, false},
		{"will", 5, connect(will), 0x87, false},
		{"will retain", 4, connect(func(p *packets.ConnectParams) { will(p); p.WillRetain = true }), 0x05, false},
		{"will retain", 5, connect(func(p *packets.ConnectParams) { will(p); p.WillRetain = true }), 0x9A, false},
		{"will QoS 2", 4, connect(func(p *packets.ConnectParams) { will(p); p.WillQos = 2 }), 0x05, false},
		{"will QoS 2", 5, connect(func(p *packets.ConnectParams) { will(p); p.WillQos = 2 }), 0x9B, false},
		{"empty client ID, not clean", 4, connect(func(p *packets.ConnectParams) { p.ClientIdentifier, p.Clean = "", false }), 0x02, false},
		{"protocol level 3 named MQTT", 3, connect(func(*packets.ConnectParams) {}), 0x01, false},
		{"password flag, no password", 4, connect(func(p *packets.ConnectParams) { p.Password = nil }), 0, true},
		{"password flag, no password", 5, connect(func(p *packets.ConnectParams) { p.Password = nil }), 0x82, false},
	}
	for _, tt := range tests {
		c := dialRaw(t, n.Addr(), tt.v)
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: tt.params}))
		pk, err := c.recv(5 * time.Second)
		if tt.none {
			require.Error(t, err, "%s (v%d): want no CONNACK, got %+v", tt.name, tt.v, pk)
			continue
		}
		require.NoError(t, err, "%s (v%d)", tt.name, tt.v)
		require.Equal(t, packets.Connack, pk.FixedHeader.Type, "%s (v%d)", tt.name, tt.v)
		require.Equal(t, tt.want, pk.ReasonCode, "%s (v%d): CONNACK 0x%02X, want 0x%02X", tt.name, tt.v, pk.ReasonCode, tt.want)
		_ = c.conn.Close()
	}
}
