package main

import (
	"io"
	"net"
	"slices"
	"sync"

	"github.com/mochi-mqtt/server/v2/packets"
)

// readAheadSize is the size of the buffers a connection reads into while
// packets arrive. They come from a pool: an idle connection holds none.
const readAheadSize = 4096

var readAheadPool = sync.Pool{New: func() any { return new([readAheadSize]byte) }}

// connReader is a connection's socket as its packets are read. It lets a
// connection's
// waiting goroutine wait for the next packet without a buffer of its own
// (wait reads into a small array in the connReader and keeps what it
// read for the next Reads), reads ahead into a pooled buffer only while
// bytes are arriving, and follows
// the MQTT framing of the bytes it hands out (started, read), which the
// fuzz target checks against the packets the codec decodes.
//
// Reads happen on one goroutine at a time (the connection's waiting
// goroutine, then the worker that reads and processes); writes,
// deadlines and Close are the underlying connection's.
type connReader struct {
	net.Conn

	pre    []byte               // the first packet, read by preread (nil once handed out)
	pr     int                  // pre[pr:] is unread
	small  [16]byte             // what wait read
	one    [1]byte              // ReadByte's
	sr, sw uint8                // small[sr:sw] is unread
	ahead  *[readAheadSize]byte // read ahead, not yet handed out (nil when empty)
	r, w   int                  // ahead[r:w] is unread

	// The framing of the bytes handed out (as packets.DecodeLength).
	state   uint8
	shift   uint32
	length  uint32
	left    int    // bytes of the current packet's body not handed out
	started uint64 // packets whose first byte has been handed out
	read    uint64 // packets decoded (counted by client.readPacket)
}

// States of connReader's framing.
const (
	frameHeader uint8 = iota // next byte starts a packet
	frameLength              // in the remaining length
	frameBody                // in the body (left bytes)
	frameBroken              // a malformed length: the connection ends
)

// wait blocks until bytes arrive on the connection (or the read fails,
// e.g. at the keep alive deadline), and keeps them (at most 16, which
// the connection holds anyway: enough for a PUBACK or two, or a PINGREQ)
// for the next Reads.
func (c *connReader) wait() error {
	for {
		k, err := c.Conn.Read(c.small[:])
		if k > 0 {
			c.sr, c.sw = 0, uint8(k)
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// buffered reports whether a byte of a packet not read yet is waiting:
// the CONNECT, what wait kept, or what was read ahead.
func (c *connReader) buffered() bool {
	return c.pre != nil || c.sr < c.sw || c.ahead != nil
}

// ReadByte reads one byte (for the fixed header and the remaining
// length).
func (c *connReader) ReadByte() (byte, error) {
	for {
		k, err := c.Read(c.one[:])
		if k == 1 {
			return c.one[0], nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// maxConnectSize bounds the CONNECT of a connection that is not accepted
// yet (its remaining length, below Config.MaxPacketSize): a client ID and
// a username of at most 128 bytes, a token and a few MQTT 5 properties fit
// in it many times over. A larger CONNECT closes the connection.
const maxConnectSize = 16 << 10

// prereadChunk is the first size of preread's buffer, which then doubles
// as the bytes arrive.
const prereadChunk = 512

// preread reads the connection's first packet, a CONNECT of at most limit
// bytes of body, whole, before it is decoded: into a buffer that grows
// with the bytes received, so that a client that announces a large
// CONNECT and sends little costs little (client.readPacket allocates the
// announced length at once). The Reads then hand it out. reading is called once the fixed header is read and its body
// awaited; done when preread returns after that.
func (c *connReader) preread(limit int, reading, done func()) error {
	var hdr [5]byte
	n, length := 0, 0
	for {
		if _, err := io.ReadFull(c.Conn, hdr[n:n+1]); err != nil {
			return err
		}
		n++
		if n == 1 {
			if hdr[0]>>4 != packets.Connect {
				return packets.ErrProtocolViolationRequireFirstConnect // [MQTT-3.1.0-1]
			}
			continue
		}
		length |= int(hdr[n-1]&127) << (7 * (n - 2))
		if hdr[n-1]&128 == 0 {
			break
		}
		if n == len(hdr) {
			return packets.ErrMalformedVariableByteInteger
		}
	}
	if length > limit {
		return packets.ErrPacketTooLarge
	}
	reading()
	defer done()
	buf := make([]byte, n, n+min(length, prereadChunk))
	copy(buf, hdr[:n])
	for len(buf) < n+length {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), n+length-len(buf)))
		}
		k, err := c.Conn.Read(buf[len(buf):min(cap(buf), n+length)])
		buf = buf[:len(buf)+k]
		if err != nil && len(buf) < n+length {
			return err
		}
	}
	c.pre, c.pr = buf, 0
	return nil
}

// Read hands out the CONNECT preread read, what wait read, then what was read ahead,
// then reads from the connection (small reads go through a read-ahead
// buffer).
func (c *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var k int
	var err error
	switch {
	case c.pre != nil:
		k = copy(p, c.pre[c.pr:])
		c.pr += k
		if c.pr == len(c.pre) {
			c.pre, c.pr = nil, 0
		}
	case c.sr < c.sw:
		k = copy(p, c.small[c.sr:c.sw])
		c.sr += uint8(k)
	case c.ahead != nil:
		k = copy(p, c.ahead[c.r:c.w])
		c.r += k
	case len(p) >= readAheadSize:
		k, err = c.Conn.Read(p)
	default:
		buf := readAheadPool.Get().(*[readAheadSize]byte)
		var m int
		m, err = c.Conn.Read(buf[:])
		c.ahead, c.r, c.w = buf, 0, m
		k = copy(p, buf[:m])
		c.r = k
	}
	if c.ahead != nil && c.r == c.w {
		readAheadPool.Put(c.ahead)
		c.ahead = nil
	}
	c.frame(p[:k])
	return k, err
}

// frame follows the MQTT framing through bytes handed out: a fixed
// header byte, the remaining length (a variable byte integer, decoded as
// the codec's packets.DecodeLength does), then that many bytes of body.
func (c *connReader) frame(b []byte) {
	for len(b) > 0 {
		switch c.state {
		case frameHeader:
			c.started++
			c.state, c.shift, c.length = frameLength, 0, 0
			b = b[1:]
		case frameLength:
			x := b[0]
			b = b[1:]
			c.length |= uint32(x&127) << c.shift
			switch {
			case c.length > 268435455:
				c.state = frameBroken
			case x&128 == 0:
				c.left = int(c.length)
				c.state = frameBody
				if c.left == 0 {
					c.state = frameHeader
				}
			default:
				c.shift += 7
			}
		case frameBody:
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			if c.left == 0 {
				c.state = frameHeader
			}
		default:
			return
		}
	}
}
