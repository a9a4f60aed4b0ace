package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// chunkConn is a net.Conn whose reads return the chunks it was given, one
// per read (or less, when the reader's buffer is smaller), then io.EOF.
type chunkConn struct {
	net.Conn
	chunks [][]byte
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	k := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][k:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return k, nil
}

// varint encodes n as an MQTT variable byte integer; padded, with one
// byte more than it needs (which mochi accepts).
func varint(n int, padded bool) []byte {
	var b []byte
	for {
		x := byte(n % 128)
		n /= 128
		if n > 0 {
			x |= 128
		}
		b = append(b, x)
		if n == 0 {
			break
		}
	}
	if padded {
		b[len(b)-1] |= 128
		b = append(b, 0)
	}
	return b
}

// TestConnReaderFraming reads streams of packets of all sizes, split
// into chunks at random, the way the node does (wait when nothing is
// buffered, then read packets byte by byte for the fixed header and
// whole for the body, client.readPacket, while something is), and checks
// that buffered is true exactly when a byte taken from the socket is not
// yet read as a packet.
func TestConnReaderFraming(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var stream bytes.Buffer
		var want []int // body lengths
		for range 1 + rng.IntN(20) {
			var n int
			switch rng.IntN(4) {
			case 0:
				n = 0
			case 1:
				n = rng.IntN(20)
			case 2:
				n = 100 + rng.IntN(300) // two length bytes past 127
			default:
				n = rng.IntN(3 * readAheadSize)
			}
			stream.WriteByte(0x30)
			stream.Write(varint(n, rng.IntN(4) == 0))
			stream.Write(bytes.Repeat([]byte{byte(n)}, n))
			want = append(want, n)
		}
		var chunks [][]byte
		for b := stream.Bytes(); len(b) > 0; {
			k := min(len(b), 1+rng.IntN(64))
			if rng.IntN(8) == 0 {
				k = min(len(b), 1+rng.IntN(2*readAheadSize))
			}
			chunks = append(chunks, b[:k])
			b = b[k:]
		}
		cc := &chunkConn{chunks: chunks}
		rc := &connReader{Conn: cc}
		consumed := 0 // bytes read as packets
		waiting := func() bool {
			left := 0
			for _, c := range cc.chunks {
				left += len(c)
			}
			return stream.Len()-left > consumed // taken from the socket, not read as a packet
		}
		for i, n := range want {
			if !rc.buffered() {
				require.NoError(t, rc.wait(), "round %d packet %d", round, i)
			}
			b, err := rc.ReadByte()
			require.NoError(t, err)
			require.Equal(t, byte(0x30), b)
			length, bu, err := packets.DecodeLength(rc)
			require.NoError(t, err)
			require.Equal(t, n, length, "round %d packet %d", round, i)
			_, err = io.ReadFull(rc, make([]byte, length))
			require.NoError(t, err)
			rc.read++
			consumed += 1 + bu + length
			require.Equal(t, waiting(), rc.buffered(), "round %d packet %d", round, i)
		}
		require.False(t, rc.buffered())
		require.Equal(t, uint64(len(want)), rc.started)
	}
}

// TestPipelinedAndSplitPackets: packets that arrive together are all
// processed, and a packet that arrives in pieces is processed once it is
// complete.
func TestPipelinedAndSplitPackets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	id := identitiesOwnedBy(e.members(), n.NodeID(), "pipe", 1)[0]
	c := dialRaw(t, n.Addr(), 4)
	encode := func(pk packets.Packet) []byte { return mustEncode(t, pk, 4) }
	connect := encode(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(id),
			PasswordFlag: true, Password: []byte(token(t, id, auth.RoleDevice, time.Hour)),
		},
	})
	subscribe := encode(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    7,
		Filters:     packets.Subscriptions{{Filter: protocol.DeviceCommandsTopic(id), Qos: 1}},
	})
	ping := encode(packetFrom(t, "pingreq", 4))
	expect := func(typ byte) {
		t.Helper()
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, typ, pk.FixedHeader.Type)
	}

	// CONNECT, SUBSCRIBE and 20 PINGREQs in one write.
	batch := append(append([]byte{}, connect...), subscribe...)
	for range 20 {
		batch = append(batch, ping...)
	}
	_, err := c.conn.Write(batch)
	require.NoError(t, err)
	expect(packets.Connack)
	expect(packets.Suback)
	for range 20 {
		expect(packets.Pingresp)
	}

	// A SUBSCRIBE in three pieces, then one with PINGREQs glued to both
	// ends of it.
	for _, cut := range [][]byte{subscribe[:1], subscribe[1:5], subscribe[5:]} {
		_, err := c.conn.Write(cut)
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond)
	}
	expect(packets.Suback)
	_, err = c.conn.Write(append(append([]byte{}, ping...), subscribe[:3]...))
	require.NoError(t, err)
	expect(packets.Pingresp)
	time.Sleep(50 * time.Millisecond)
	_, err = c.conn.Write(append(append([]byte{}, subscribe[3:]...), ping...))
	require.NoError(t, err)
	expect(packets.Suback)
	expect(packets.Pingresp)
	require.NotNil(t, n.current(id))
}

// TestUnsubscribe: the UNSUBACK says which filters were subscribed (MQTT
// 5), and nothing is delivered on a filter after its UNSUBACK, until it
// is subscribed again.
func TestUnsubscribe(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	id := identitiesOwnedBy(e.members(), n.NodeID(), "cli-unsub", 1)[0]
	c, _, err := connectV5(t, n.Addr(), id, id, token(t, id, auth.RoleClient, time.Hour))
	require.NoError(t, err)
	all := protocol.ClientResultsFilter(id)
	require.Equal(t, byte(1), c.subscribe(t, all, 1))
	e.put(id, protocol.ClientResultsTopic(id, "dev-1"), "first", n.NodeID())
	c.col.waitDistinct(t, 1, 10*time.Second)
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "first acked")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ua, err := c.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{all, protocol.ClientResultsTopic(id, "dev-2")}})
	require.NoError(t, err)
	require.Equal(t, []byte{0x00, 0x11}, ua.Reasons)

	// A marker on a filter still subscribed, put after "second": the
	// session reads its mailbox in order, skipping what no subscription
	// matches, so once the marker came it has passed "second" by.
	require.Equal(t, byte(1), c.subscribe(t, protocol.ClientResultsTopic(id, "dev-3"), 1))
	e.put(id, protocol.ClientResultsTopic(id, "dev-1"), "second", n.NodeID())
	e.put(id, protocol.ClientResultsTopic(id, "dev-3"), "marker", n.NodeID())
	c.col.waitDistinct(t, 2, 10*time.Second)
	require.Equal(t, []string{"first", "marker"}, c.col.list())
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 1 }, "the marker acked, \"second\" waiting for a subscription")

	require.Equal(t, byte(1), c.subscribe(t, all, 1))
	c.col.waitDistinct(t, 3, 10*time.Second)
	require.Equal(t, []string{"first", "marker", "second"}, c.col.list())
}
