package main

import (
	"io"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/mailbox"
)

// pubackClient returns a client whose session has the packet IDs pids
// in flight (entry ID: the packet ID in decimal) and whose waiting
// goroutine has just read b (connReader.wait: at most 16 bytes); the
// session's background goroutine is a no-op, so its ackQ keeps what
// the PUBACKs acknowledged.
func pubackClient(t testing.TB, version byte, b []byte, pids []uint16) *client {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	n := &Node{acker: newWorkers(1, func(*session) {}, done)}
	s := &session{n: n, state: sessionStreaming, window: 65535, inflight: map[uint16]mailbox.Entry{}, sending: map[string]bool{}}
	for _, pid := range pids {
		id := strconv.Itoa(int(pid))
		s.inflight[pid] = mailbox.Entry{ID: id}
		s.sending[id] = true
	}
	c := &client{n: n, version: version, sess: s}
	c.rc.sw = uint8(copy(c.rc.small[:], b))
	return c
}

// acked returns the entry IDs the session's PUBACKs queued for AckMany.
func acked(s *session) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if s.ackQ != nil {
		for _, e := range *s.ackQ {
			out = append(out, e.ID)
		}
	}
	return out
}

// FuzzPubacks checks client.pubacks, which processes plain PUBACKs on
// the waiting goroutine without the codec, against the codec's path
// (client.readPacket, then what receive does with a PUBACK): for any
// bytes a socket may send (at most what connReader.wait reads at once),
// either pubacks leaves them, and the reader, untouched for a worker, or
// they are whole PUBACKs that the codec decodes to reason code 0x00, and
// pubacks acknowledges the same packet IDs, in the same order, and
// frames and counts the same packets.
func FuzzPubacks(f *testing.F) {
	for _, tc := range packetTable {
		f.Add(tc.v, tc.raw)
	}
	f.Add(byte(4), []byte{0x40, 2, 0, 7, 0x40, 2, 0, 8})
	f.Add(byte(5), []byte{0x40, 2, 0, 7, 0x40, 2, 0, 7, 0x40, 2, 1, 0})
	f.Add(byte(4), []byte{0x40, 2, 0, 7, 0x40, 2, 0})
	f.Add(byte(5), []byte{0x40, 2, 0, 7, 0x40, 3, 0, 8, 0x80})
	f.Add(byte(4), []byte{0x41, 2, 0, 7})
	f.Add(byte(4), []byte{0x40, 2, 0, 0})
	f.Fuzz(func(t *testing.T, version byte, b []byte) {
		if version != 4 && version != 5 {
			version = 4 + version%2
		}
		if len(b) > 16 {
			b = b[:16]
		}
		// The codec's path, on a connection of its own: the packets,
		// then the packet IDs in flight (every ID it read, so that each
		// PUBACK finds its PUBLISH once).
		ref := &client{n: &Node{cfg: Config{MaxPacketSize: DefaultMaxPacketSize}}, version: version}
		ref.rc.Conn = &chunkConn{} // nothing more arrives: a part of a packet ends with io.EOF
		ref.rc.sw = uint8(copy(ref.rc.small[:], b))
		var pks []packets.Packet
		whole := true
		for ref.rc.buffered() {
			pk, err := ref.readPacket()
			if err != nil {
				whole = false
				break
			}
			pks = append(pks, pk)
		}
		var pids []uint16
		var want []string
		inflight := map[uint16]bool{}
		for _, pk := range pks {
			if pk.FixedHeader.Type == packets.Puback && !inflight[pk.PacketID] {
				inflight[pk.PacketID] = true
				pids = append(pids, pk.PacketID)
			}
		}
		for _, pk := range pks {
			if pk.FixedHeader.Type == packets.Puback && inflight[pk.PacketID] {
				delete(inflight, pk.PacketID)
				want = append(want, strconv.Itoa(int(pk.PacketID)))
			}
		}

		c := pubackClient(t, version, b, pids)
		before := c.rc
		if !c.pubacks() {
			require.Equal(t, before, c.rc, "pubacks refused % x but changed the reader", b)
			require.Empty(t, acked(c.sess), "pubacks refused % x but acknowledged", b)
			return
		}
		require.True(t, whole, "pubacks took % x, which the codec does not read as whole packets", b)
		for _, pk := range pks {
			require.Equal(t, packets.Puback, pk.FixedHeader.Type, "pubacks took % x, which holds a packet of type %d", b, pk.FixedHeader.Type)
			require.Equal(t, byte(0), pk.ReasonCode, "pubacks took % x, which holds a PUBACK with reason code %#x", b, pk.ReasonCode)
		}
		require.False(t, c.rc.buffered(), "pubacks left bytes of % x unread", b)
		require.Equal(t, ref.rc.started, c.rc.started, "packets framed of % x", b)
		require.Equal(t, ref.rc.read, c.rc.read, "packets read of % x", b)
		require.Equal(t, frameHeader, c.rc.state, "framing after % x", b)
		require.Equal(t, want, acked(c.sess), "entries acknowledged by % x", b)
	})
}

// TestPubacks: the waiting goroutine's fast path takes bursts of plain
// PUBACKs only, and leaves everything else to a worker.
func TestPubacks(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		pids []uint16
		want []string // nil: left for a worker
	}{
		{"one", []byte{0x40, 2, 0, 7}, []uint16{7}, []string{"7"}},
		{"two", []byte{0x40, 2, 0, 7, 0x40, 2, 1, 2}, []uint16{7, 258}, []string{"7", "258"}},
		{"not in flight", []byte{0x40, 2, 0, 9}, []uint16{7}, []string{}},
		{"a part of a second", []byte{0x40, 2, 0, 7, 0x40, 2}, []uint16{7}, nil},
		{"with a reason code", []byte{0x40, 3, 0, 7, 0x80}, []uint16{7}, nil},
		{"flags set", []byte{0x42, 2, 0, 7}, []uint16{7}, nil},
		{"a PINGREQ after", []byte{0x40, 2, 0, 7, 0xc0, 0}, []uint16{7}, nil},
		{"a PINGREQ", []byte{0xc0, 0, 0xc0, 0}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := pubackClient(t, 4, tt.b, tt.pids)
			got := c.pubacks()
			if got != (tt.want != nil) {
				t.Fatalf("pubacks(% x) = %v, want %v", tt.b, got, tt.want != nil)
			}
			if !got {
				if c.rc.sr != 0 || c.rc.started != 0 {
					t.Errorf("pubacks(% x) refused, but read %d bytes and framed %d packets", tt.b, c.rc.sr, c.rc.started)
				}
				return
			}
			if a := acked(c.sess); len(a) != len(tt.want) || (len(a) > 0 && !slices.Equal(a, tt.want)) {
				t.Errorf("pubacks(% x) acknowledged %v, want %v", tt.b, a, tt.want)
			}
			if c.rc.buffered() || c.rc.read != uint64(len(tt.b)/pubackSize) || c.rc.started != c.rc.read {
				t.Errorf("pubacks(% x): buffered %v, read %d, framed %d; want nothing left, %d read and framed",
					tt.b, c.rc.buffered(), c.rc.read, c.rc.started, len(tt.b)/pubackSize)
			}
		})
	}
}

// BenchmarkPubacks: the CPU of taking one plain PUBACK that wait has read,
// through the codec's path on a worker (readPacket, then receive) and
// through the waiting goroutine's own (pubacks); the hand-off to the
// worker and its waiting goroutine, which pubacks also saves, are not in
// these figures. Its packet ID is not in flight: session.puback, the
// same for both, returns at once.
func BenchmarkPubacks(b *testing.B) {
	raw := []byte{0x40, 2, 0, 7}
	for _, path := range []string{"codec", "pubacks"} {
		b.Run(path, func(b *testing.B) {
			c := pubackClient(b, 4, nil, nil)
			c.n.cfg.MaxPacketSize = DefaultMaxPacketSize
			b.ReportAllocs()
			for b.Loop() {
				c.rc.sr, c.rc.sw = 0, uint8(copy(c.rc.small[:], raw))
				if path == "pubacks" {
					if !c.pubacks() {
						b.Fatal("pubacks refused a PUBACK")
					}
					continue
				}
				pk, err := c.readPacket()
				if err != nil {
					b.Fatal(err)
				}
				if err := c.receive(pk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRefreshDeadline: the CPU of client.refreshDeadline after each
// packet of a busy connection (keep alive 30 s) on a TCP socket: every
// call moved both of the socket's deadlines before, only those that come
// within deadlineSlack of 1.5 × keep alive now.
func BenchmarkRefreshDeadline(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer nc.Close()
	b.Run("every packet", func(b *testing.B) { // as before
		b.ReportAllocs()
		for b.Loop() {
			_ = nc.SetDeadline(time.Now().Add(45 * time.Second))
		}
	})
	b.Run("refreshDeadline", func(b *testing.B) {
		c := &client{keepalive: 30}
		c.rc.Conn = nc
		b.ReportAllocs()
		for b.Loop() {
			c.refreshDeadline()
		}
	})
}
