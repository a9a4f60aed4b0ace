package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// packetCase is one MQTT packet as bytes on the wire (written out here
// from the specifications, MQTT 3.1.1 §3 and MQTT 5 §3) and as the packet
// mochi's codec decodes them into and encodes back to them: the tests'
// table of packets, like mochi's packets/tpackets.go. TestPacketTable
// checks every entry both ways, so the bytes the tests send and expect
// are the ones the specifications and mochi agree on.
type packetCase struct {
	name string
	v    byte // protocol version: 3 (MQTT 3.1), 4 (3.1.1) or 5
	raw  []byte
	pk   packets.Packet // as decoded, FixedHeader.Remaining included
}

// Pieces of the table's packets.
var (
	tMQTT   = []byte{0x00, 0x04, 'M', 'Q', 'T', 'T'}
	tMQIsdp = []byte{0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p'}
	tD1     = []byte{0x00, 0x02, 'd', '1'} // client ID and username "d1"
	tPW     = []byte{0x00, 0x02, 'p', 'w'} // password "pw"
	tAB     = []byte{0x00, 0x03, 'a', '/', 'b'}
)

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// tConnect is the CONNECT of client "d1" with username "d1", password
// "pw", a clean session and a keep alive of 30 s, as decoded.
func tConnect(v byte, remaining int, name string, props packets.Properties) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect, Remaining: remaining},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName: []byte(name), Clean: true, Keepalive: 30,
			ClientIdentifier: "d1",
			UsernameFlag:     true, Username: []byte("d1"),
			PasswordFlag: true, Password: []byte("pw"),
		},
		Properties: props,
	}
}

// packetTable holds every MQTT control packet type in MQTT 3.1.1 and 5
// (AUTH: MQTT 5 only), and the MQTT 3.1 CONNECT.
var packetTable = []packetCase{
	// CONNECT: flags 0xC2 = username, password, clean session.
	{name: "connect", v: 3,
		raw: cat([]byte{0x10, 24}, tMQIsdp, []byte{3, 0xC2, 0, 30}, tD1, tD1, tPW),
		pk:  tConnect(3, 24, "MQIsdp", packets.Properties{})},
	{name: "connect", v: 4,
		raw: cat([]byte{0x10, 22}, tMQTT, []byte{4, 0xC2, 0, 30}, tD1, tD1, tPW),
		pk:  tConnect(4, 22, "MQTT", packets.Properties{})},
	{name: "connect", v: 5,
		raw: cat([]byte{0x10, 23}, tMQTT, []byte{5, 0xC2, 0, 30, 0}, tD1, tD1, tPW),
		pk:  tConnect(5, 23, "MQTT", packets.Properties{})},
	{name: "connect session expiry", v: 5, // property 0x11, four bytes
		raw: cat([]byte{0x10, 28}, tMQTT, []byte{5, 0xC2, 0, 30, 5, 0x11, 0, 0, 0, 60}, tD1, tD1, tPW),
		pk:  tConnect(5, 28, "MQTT", packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true})},

	// CONNACK: session present, return or reason code (MQTT 5:
	// properties).
	{name: "connack accepted", v: 4, raw: []byte{0x20, 2, 0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: 2}, ProtocolVersion: 4}},
	{name: "connack not authorized", v: 4, raw: []byte{0x20, 2, 0, 0x05},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: 2}, ProtocolVersion: 4, ReasonCode: 0x05}},
	{name: "connack accepted", v: 5, raw: []byte{0x20, 3, 0, 0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: 3}, ProtocolVersion: 5}},
	{name: "connack server keep alive", v: 5, raw: []byte{0x20, 6, 0, 0, 3, 0x13, 0, 60}, // property 0x13, two bytes
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: 6}, ProtocolVersion: 5,
			Properties: packets.Properties{ServerKeepAlive: 60, ServerKeepAliveFlag: true}}},
	{name: "connack not authorized", v: 5, raw: []byte{0x20, 3, 0, 0x87, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: 3}, ProtocolVersion: 5, ReasonCode: 0x87}},

	// PUBLISH: topic "a/b", packet ID 7 at QoS 1, payload "hi".
	{name: "publish qos 0", v: 4, raw: cat([]byte{0x30, 7}, tAB, []byte("hi")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Remaining: 7}, ProtocolVersion: 4,
			TopicName: "a/b", Payload: []byte("hi")}},
	{name: "publish qos 1", v: 4, raw: cat([]byte{0x32, 9}, tAB, []byte{0, 7}, []byte("hi")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Remaining: 9}, ProtocolVersion: 4,
			TopicName: "a/b", PacketID: 7, Payload: []byte("hi")}},
	{name: "publish qos 1 dup retain", v: 4, raw: cat([]byte{0x3B, 9}, tAB, []byte{0, 7}, []byte("hi")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true, Retain: true, Remaining: 9},
			ProtocolVersion: 4, TopicName: "a/b", PacketID: 7, Payload: []byte("hi")}},
	{name: "publish qos 0", v: 5, raw: cat([]byte{0x30, 8}, tAB, []byte{0}, []byte("hi")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Remaining: 8}, ProtocolVersion: 5,
			TopicName: "a/b", Payload: []byte("hi")}},
	{name: "publish qos 1", v: 5, raw: cat([]byte{0x32, 10}, tAB, []byte{0, 7, 0}, []byte("hi")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Remaining: 10}, ProtocolVersion: 5,
			TopicName: "a/b", PacketID: 7, Payload: []byte("hi")}},

	// PUBACK, PUBREC, PUBREL (flags 0b0010), PUBCOMP: packet ID (MQTT 5:
	// a reason code when not success, then properties).
	{name: "puback", v: 4, raw: []byte{0x40, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback, Remaining: 2}, ProtocolVersion: 4, PacketID: 7}},
	{name: "puback", v: 5, raw: []byte{0x40, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback, Remaining: 2}, ProtocolVersion: 5, PacketID: 7}},
	{name: "puback unspecified error", v: 5, raw: []byte{0x40, 3, 0, 7, 0x80},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback, Remaining: 3}, ProtocolVersion: 5, PacketID: 7, ReasonCode: 0x80}},
	{name: "pubrec", v: 4, raw: []byte{0x50, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec, Remaining: 2}, ProtocolVersion: 4, PacketID: 7}},
	{name: "pubrec", v: 5, raw: []byte{0x50, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec, Remaining: 2}, ProtocolVersion: 5, PacketID: 7}},
	{name: "pubrel", v: 4, raw: []byte{0x62, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1, Remaining: 2}, ProtocolVersion: 4, PacketID: 7}},
	{name: "pubrel", v: 5, raw: []byte{0x62, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1, Remaining: 2}, ProtocolVersion: 5, PacketID: 7}},
	{name: "pubcomp", v: 4, raw: []byte{0x70, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp, Remaining: 2}, ProtocolVersion: 4, PacketID: 7}},
	{name: "pubcomp", v: 5, raw: []byte{0x70, 2, 0, 7},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp, Remaining: 2}, ProtocolVersion: 5, PacketID: 7}},

	// SUBSCRIBE (flags 0b0010): packet ID 1, (MQTT 5: properties,) filter
	// "a/b" with its QoS (MQTT 5: its options byte).
	{name: "subscribe", v: 4, raw: cat([]byte{0x82, 8, 0, 1}, tAB, []byte{1}),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: 8}, ProtocolVersion: 4,
			PacketID: 1, Filters: packets.Subscriptions{{Filter: "a/b", Qos: 1}}}},
	{name: "subscribe", v: 5, raw: cat([]byte{0x82, 9, 0, 1, 0}, tAB, []byte{1}),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: 9}, ProtocolVersion: 5,
			PacketID: 1, Filters: packets.Subscriptions{{Filter: "a/b", Qos: 1}}}},
	{name: "subscribe options", v: 5, raw: cat([]byte{0x82, 9, 0, 1, 0}, tAB, []byte{0x2D}), // QoS 1, no local, retain as published, retain handling 2
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: 9}, ProtocolVersion: 5,
			PacketID: 1, Filters: packets.Subscriptions{{Filter: "a/b", Qos: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}}}},

	// SUBACK: packet ID, (MQTT 5: properties,) one code per filter.
	{name: "suback", v: 4, raw: []byte{0x90, 3, 0, 1, 1},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: 3}, ProtocolVersion: 4, PacketID: 1, ReasonCodes: []byte{1}}},
	{name: "suback failure", v: 4, raw: []byte{0x90, 3, 0, 1, 0x80},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: 3}, ProtocolVersion: 4, PacketID: 1, ReasonCodes: []byte{0x80}}},
	{name: "suback", v: 5, raw: []byte{0x90, 4, 0, 1, 0, 1},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: 4}, ProtocolVersion: 5, PacketID: 1, ReasonCodes: []byte{1}}},
	{name: "suback not authorized", v: 5, raw: []byte{0x90, 4, 0, 1, 0, 0x87},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: 4}, ProtocolVersion: 5, PacketID: 1, ReasonCodes: []byte{0x87}}},

	// UNSUBSCRIBE (flags 0b0010) and UNSUBACK (MQTT 5: properties and a
	// code per filter).
	{name: "unsubscribe", v: 4, raw: cat([]byte{0xA2, 7, 0, 2}, tAB),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1, Remaining: 7}, ProtocolVersion: 4,
			PacketID: 2, Filters: packets.Subscriptions{{Filter: "a/b"}}}},
	{name: "unsubscribe", v: 5, raw: cat([]byte{0xA2, 8, 0, 2, 0}, tAB),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1, Remaining: 8}, ProtocolVersion: 5,
			PacketID: 2, Filters: packets.Subscriptions{{Filter: "a/b"}}}},
	{name: "unsuback", v: 4, raw: []byte{0xB0, 2, 0, 2},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback, Remaining: 2}, ProtocolVersion: 4, PacketID: 2}},
	{name: "unsuback", v: 5, raw: []byte{0xB0, 5, 0, 2, 0, 0x00, 0x11},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback, Remaining: 5}, ProtocolVersion: 5, PacketID: 2,
			ReasonCodes: []byte{0x00, 0x11}}},

	// PINGREQ and PINGRESP: a fixed header only.
	{name: "pingreq", v: 4, raw: []byte{0xC0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: 4}},
	{name: "pingreq", v: 5, raw: []byte{0xC0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: 5}},
	{name: "pingresp", v: 4, raw: []byte{0xD0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}, ProtocolVersion: 4}},
	{name: "pingresp", v: 5, raw: []byte{0xD0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}, ProtocolVersion: 5}},

	// DISCONNECT (MQTT 5: reason code and properties).
	{name: "disconnect", v: 4, raw: []byte{0xE0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}},
	{name: "disconnect", v: 5, raw: []byte{0xE0, 2, 0, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect, Remaining: 2}, ProtocolVersion: 5}},
	{name: "disconnect use another server", v: 5, // property 0x1C, server reference "b:1883"
		raw: cat([]byte{0xE0, 11, 0x9C, 9, 0x1C, 0, 6}, []byte("b:1883")),
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect, Remaining: 11}, ProtocolVersion: 5,
			ReasonCode: 0x9C, Properties: packets.Properties{ServerReference: "b:1883"}}},

	// AUTH (MQTT 5 only): reason code and properties.
	{name: "auth continue", v: 5, raw: []byte{0xF0, 2, 0x18, 0},
		pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth, Remaining: 2}, ProtocolVersion: 5, ReasonCode: 0x18}},
}

// packetFrom returns the table's packet named name for protocol version
// v, as a packet to encode.
func packetFrom(t testing.TB, name string, v byte) packets.Packet {
	t.Helper()
	for _, tc := range packetTable {
		if tc.name == name && tc.v == v {
			return tc.pk
		}
	}
	t.Fatalf("no packet %q for version %d in packetTable", name, v)
	return packets.Packet{}
}

// encodePacket encodes pk with mochi's codec, for protocol version
// pk.ProtocolVersion.
func encodePacket(pk packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	err := encode(&pk, &buf)
	return buf.Bytes(), err
}

// mustEncode encodes pk for protocol version v.
func mustEncode(t testing.TB, pk packets.Packet, v byte) []byte {
	t.Helper()
	pk.ProtocolVersion = v
	b, err := encodePacket(pk)
	require.NoError(t, err, "encode %s", packetSummary(&pk))
	return b
}

// decodeFrom reads one packet of protocol version v (a CONNECT brings its
// own) from r with mochi's codec.
func decodeFrom(r *bufio.Reader, v byte) (packets.Packet, error) {
	b, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return packets.Packet{}, err
	}
	if fh.Remaining, _, err = packets.DecodeLength(r); err != nil {
		return packets.Packet{}, err
	}
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: v}
	err = decode(&pk, body)
	return pk, err
}

// decodePacket decodes b, which must be exactly one packet.
func decodePacket(b []byte, v byte) (packets.Packet, error) {
	r := bufio.NewReader(bytes.NewReader(b))
	pk, err := decodeFrom(r, v)
	if err == nil && r.Buffered() > 0 {
		err = fmt.Errorf("decode: %d bytes after the packet", r.Buffered())
	}
	return pk, err
}

// TestPacketTable checks every packet of the table against mochi's
// codec: the bytes decode to the packet, and the packet encodes to the
// bytes.
func TestPacketTable(t *testing.T) {
	t.Parallel()
	types := map[byte]map[byte]bool{} // version -> packet types
	for _, tc := range packetTable {
		t.Run(fmt.Sprintf("%s/v%d", tc.name, tc.v), func(t *testing.T) {
			got, err := decodePacket(tc.raw, tc.v)
			require.NoError(t, err, "decode % x", tc.raw)
			require.Equal(t, tc.pk, got, "decode % x", tc.raw)

			raw, err := encodePacket(tc.pk)
			require.NoError(t, err)
			require.Equal(t, tc.raw, raw, "encode: got % x, want % x", raw, tc.raw)
		})
		if types[tc.v] == nil {
			types[tc.v] = map[byte]bool{}
		}
		types[tc.v][tc.pk.FixedHeader.Type] = true
	}
	for _, v := range []byte{4, 5} {
		for typ := packets.Connect; typ <= packets.Auth; typ++ {
			if typ == packets.Auth && v < 5 {
				continue
			}
			require.True(t, types[v][typ], "packetTable has no %s for version %d", packets.PacketNames[typ], v)
		}
	}
}

// malformedCase is a packet mochi's codec cannot decode, sent after an
// accepted CONNECT of protocol version v.
type malformedCase struct {
	name  string
	v     byte
	raw   []byte
	panic bool // mochi v2.7.9's codec panics on it (see readPacket)
}

// malformedTable holds malformed packets, each of which must end only its
// own connection.
var malformedTable = []malformedCase{
	// An MQTT 5 SUBSCRIBE whose filter has no options byte: mochi's
	// SubscribeDecode reads past the end of the packet (an index out of
	// range), which crashed the whole push server.
	{name: "subscribe without options", v: 5, raw: cat([]byte{0x82, 8, 0, 1, 0}, tAB), panic: true},
	{name: "subscribe without qos", v: 4, raw: cat([]byte{0x82, 7, 0, 1}, tAB)},
	{name: "subscribe topic past the end", v: 4, raw: []byte{0x82, 5, 0, 1, 0, 9, 'a'}},
	{name: "publish topic past the end", v: 4, raw: []byte{0x30, 2, 0, 5}},
	{name: "publish properties past the end", v: 5, raw: cat([]byte{0x30, 6}, tAB, []byte{9})},
	{name: "puback without packet id", v: 5, raw: []byte{0x40, 1, 0}},
	{name: "reserved packet type", v: 4, raw: []byte{0x00, 0}},
	{name: "subscribe with bad flags", v: 4, raw: cat([]byte{0x80, 8, 0, 1}, tAB, []byte{1})},
}
