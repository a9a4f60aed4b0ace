package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestMalformedPacketsEndOnlyTheirConnection: each packet of
// malformedTable, sent on an accepted connection, ends that connection
// (MQTT 5: after a DISCONNECT, if any, with a reason code of 0x80 or
// more), while another session of the same push server keeps receiving;
// a packet on which mochi's codec panics is counted in
// gw_push_codec_panics_total.
func TestMalformedPacketsEndOnlyTheirConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var log logBuffer
	n := e.startNode(func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ids := identitiesOwnedBy(e.members(), n.NodeID(), "malformed", len(malformedTable)+1)
	require.Len(t, ids, len(malformedTable)+1)
	bystander := ids[0]
	good := mustV3(t, n.Addr(), bystander)
	col := newCollector()
	good.subscribe(t, protocol.DeviceCommandsTopic(bystander), 1, col)

	panics := 0
	for i, tc := range malformedTable {
		id := ids[i+1]
		c := dialRaw(t, n.Addr(), tc.v)
		require.Equal(t, byte(0), c.connect(id, token(t, id, auth.RoleDevice, time.Hour)).ReasonCode, "%s v%d: CONNACK", tc.name, tc.v)
		_, err := c.conn.Write(tc.raw)
		require.NoError(t, err)
		for {
			pk, err := c.recv(10 * time.Second)
			if err != nil {
				var ne net.Error
				require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s v%d: connection still open after % x", tc.name, tc.v, tc.raw)
				break
			}
			require.Equal(t, packets.Disconnect, pk.FixedHeader.Type, "%s v%d: got %s, want DISCONNECT or the end", tc.name, tc.v, packetSummary(&pk))
			require.GreaterOrEqual(t, pk.ReasonCode, packets.ErrUnspecifiedError.Code, "%s: DISCONNECT reason", tc.name)
		}
		if tc.panic {
			panics++
			// Logged with bounded fields: the client, the packet's type
			// and length, the panic; not the packet.
			line := ""
			eventually(t, 5*time.Second, func() bool {
				for _, l := range strings.Split(log.String(), "\n") {
					if strings.Contains(l, "level=WARN msg=\"malformed packet: the packet codec panicked") && strings.Contains(l, "client_id="+id) {
						line = l
					}
				}
				return line != ""
			}, "%s: the codec's panic logged for %s:\n%s", tc.name, id, &log)
			require.Contains(t, line, fmt.Sprintf("packet=Subscribe remaining=%d", len(tc.raw)-2), "%s: log line", tc.name)
			require.Contains(t, line, "index out of range", "%s: log line", tc.name)
			require.NotContains(t, line, "a/b", "%s: the log line holds the packet's filter", tc.name)
		}
		require.Equal(t, float64(panics), value(t, n.m.codecPanics), "%s: gw_push_codec_panics_total", tc.name)

		// The push server is still there, and so is the other session.
		payload := fmt.Sprintf("after %d", i)
		e.put(bystander, protocol.DeviceCommandsTopic(bystander), payload, n.NodeID())
		col.waitDistinct(t, i+1, 10*time.Second)
		require.True(t, col.has(payload), "after %s: the other session got %v, want %q", tc.name, col.list(), payload)
	}
}

// TestPanickedInCodec: readPacket takes a panic for a malformed packet
// only when mochi's codec raised it, also through the standard library;
// a panic raised by the node's own code, directly or through the
// standard library, goes on.
func TestPanickedInCodec(t *testing.T) {
	t.Parallel()
	crasher := malformedTable[0]
	require.True(t, crasher.panic)
	tests := []struct {
		name string
		f    func()
		want bool
	}{
		{"mochi's SubscribeDecode", func() {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5}
			_ = pk.SubscribeDecode(crasher.raw[2:])
		}, true},
		{"own code", func() {
			var m map[string]int
			m["x"]++
		}, false},
		{"standard library called by own code", func() { _ = strings.Repeat("x", -1) }, false},
	}
	for _, tt := range tests {
		got := func() (got bool) {
			defer func() {
				if r := recover(); r != nil {
					got = panickedInCodec()
				}
			}()
			tt.f()
			t.Fatalf("%s: no panic", tt.name)
			return false
		}()
		require.Equal(t, tt.want, got, "panickedInCodec after a panic in %s", tt.name)
	}
}

// fuzzConn is a connection whose reads return its chunks (chunkConn).
type fuzzConn struct{ chunkConn }

func (*fuzzConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1883} }

// FuzzConnReader feeds the bytes of an untrusted socket, in chunks of
// 1 + chunk bytes, to the reader that frames and decodes packets the way
// a connection of the node does: connReader (preread of the CONNECT, then
// wait and read-ahead) under the client's reader and the codec
// (client.readPacket). No
// input may panic (a panic here would end the push server with every
// connection), every packet read must have been framed by connReader
// (read ≤ started), and what is left unread after a packet is reported
// by buffered. The seeds are the packets of packetTable and
// malformedTable after a CONNECT of each version, in
// testdata/fuzz/FuzzConnReader (the crasher of mochi v2.7.9's
// SubscribeDecode among them) and added here.
func FuzzConnReader(f *testing.F) {
	for _, v := range []byte{4, 5} {
		var connect []byte
		for _, tc := range packetTable {
			if tc.name == "connect" && tc.v == v {
				connect = tc.raw
			}
		}
		stream := connect
		for _, tc := range packetTable {
			if tc.v == v {
				stream = append(stream, tc.raw...)
			}
		}
		f.Add(uint8(255), stream)
		f.Add(uint8(0), stream)
		for _, tc := range malformedTable {
			if tc.v == v {
				f.Add(uint8(6), cat(connect, tc.raw))
			}
		}
	}
	n := &Node{cfg: Config{MaxPacketSize: DefaultMaxPacketSize}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, chunk uint8, data []byte) {
		var chunks [][]byte
		for b := data; len(b) > 0; {
			k := min(len(b), 1+int(chunk))
			chunks = append(chunks, b[:k])
			b = b[k:]
		}
		cl := &client{n: n, listener: "fuzz"}
		cl.rc.Conn = &fuzzConn{chunkConn{chunks: chunks}}
		rc := &cl.rc
		if err := rc.preread(maxConnectSize, func() {}, func() {}); err != nil {
			return
		}
		pk, err := cl.readPacket()
		if err != nil {
			return
		}
		require.Equal(t, packets.Connect, pk.FixedHeader.Type, "preread let through a packet that is not a CONNECT")
		cl.parseConnect(pk)
		for {
			if !rc.buffered() {
				if err := rc.wait(); err != nil {
					return
				}
			}
			if _, err := cl.readPacket(); err != nil {
				return
			}
			require.LessOrEqual(t, rc.read, rc.started, "packets read %d, framed %d", rc.read, rc.started)
		}
	})
}
