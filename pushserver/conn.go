package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/internal/telemetry"
)

// One MQTT connection: the client, its states, its read path and its
// write path, on mochi's packets codec only (see the package doc).

// connState is where a connection is in its life. It only ever moves
// forward:
//
//	connAwaiting ──CONNACK 0x00──▶ connOpen ──disconnect──▶ connClosing ──▶ connClosed
//	      │                           │                                        ▲
//	      └──refused, malformed, ─────┴──read error, DISCONNECT, write error───┘
//	         CONNECT deadline
//
// connClosing is the gateway closing the connection on purpose (shed,
// token expiry, lame duck, take-over, a protocol error): only the
// DISCONNECT that says why is written after it.
type connState uint32

const (
	connAwaiting connState = iota // accepted; its CONNECT is not accepted yet
	connOpen                      // CONNACK 0x00 written; packets are read and written
	connClosing                   // the gateway is closing it: nothing but its DISCONNECT is written
	connClosed                    // the socket is closed
)

// errConnClosed is the error of a write to a connection that is closing
// or closed.
var errConnClosed = errors.New("pushserver: connection closed")

// client is one MQTT connection: what its CONNECT said, and the socket.
// It is handed from goroutine to goroutine (a waiting goroutine, then a
// worker that reads and processes the packets that have arrived, see
// serveConn); writes come from the reading worker (acknowledgements),
// the session's runner (PUBLISHes), the completer of held answers
// (their PUBACKs) and the node (DISCONNECTs), one at a time (wmu).
type client struct {
	n        *Node
	rc       connReader // the socket, and what has been read ahead of it
	listener string     // "mqtt" or "ws"
	ended    func(net.Conn, error)

	// From the CONNECT; set before the connection is open, read-only
	// after.
	id              string // the client ID, which is the identity
	version         byte   // 4 (3.1.1) or 5
	keepalive       uint16 // seconds; 0: none
	serverKeepalive bool   // keepalive is the server's (MQTT 5 Server Keep Alive)
	maxPacket       uint32 // the client's Maximum Packet Size (MQTT 5); 0: none
	receiveMax      uint16 // the client's Receive Maximum (MQTT 5); 0: none
	noProblemInfo   bool   // MQTT 5 Request Problem Information 0: no reason strings

	sess *session // set when the connection is accepted, before it opens

	// deadline is the socket's deadline set by refreshDeadline, unix
	// nanoseconds (0: none set yet; noDeadline: none). The reading
	// goroutine's alone.
	deadline int64

	state atomic.Uint32 // a connState
	wmu   sync.Mutex    // one write at a time

	// waitFn is c.waitPacket, made once: starting a waiting goroutine
	// allocates nothing (an allocation can take a goroutine deeper than
	// its smallest stack).
	waitFn func()
}

// remote is the client's address, for logs.
func (c *client) remote() string { return c.rc.RemoteAddr().String() }

// isClosed reports whether the connection is closing or closed.
func (c *client) isClosed() bool { return connState(c.state.Load()) >= connClosing }

// advance moves the connection to state to, if that is forward; it
// reports whether it moved.
func (c *client) advance(to connState) bool {
	for {
		from := c.state.Load()
		if connState(from) >= to {
			return false
		}
		if c.state.CompareAndSwap(from, uint32(to)) {
			return true
		}
	}
}

// stop closes the socket (once).
func (c *client) stop() {
	if c.advance(connClosed) {
		_ = c.rc.Close()
	}
}

// disconnect closes the connection on purpose: MQTT 5 clients get a
// DISCONNECT with code (and the server reference, if any); MQTT 3.1.1
// has no server DISCONNECT, so the connection is just closed.
func (c *client) disconnect(code packets.Code, serverRef string) {
	if !c.advance(connClosing) {
		c.stop()
		return
	}
	if c.version == 5 {
		_ = c.rc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.write(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason, ServerReference: serverRef},
		})
	}
	c.stop()
}

// writePacket encodes pk with the codec for this client and writes it;
// errConnClosed once the connection is closing, packets.ErrPacketTooLarge
// when it exceeds the client's Maximum Packet Size (nothing is written).
func (c *client) writePacket(pk packets.Packet) error {
	if c.isClosed() {
		return errConnClosed
	}
	return c.write(pk)
}

// writeBuffers hold packets while they are encoded and written.
var writeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledWrite is the largest buffer given back to writeBuffers.
const maxPooledWrite = 64 << 10

func (c *client) write(pk packets.Packet) error {
	buf := getWriteBuffer()
	defer putWriteBuffer(buf)
	if err := c.encodeTo(&pk, buf); err != nil {
		return err
	}
	return c.writeBytes(buf.Bytes())
}

// getWriteBuffer returns an empty buffer from writeBuffers.
func getWriteBuffer() *bytes.Buffer {
	buf := writeBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	return buf
}

// putWriteBuffer gives buf back to writeBuffers unless it has grown
// beyond maxPooledWrite.
func putWriteBuffer(buf *bytes.Buffer) {
	if buf.Cap() <= maxPooledWrite {
		writeBuffers.Put(buf)
	}
}

// encodeTo appends pk, encoded for this client, to buf;
// packets.ErrPacketTooLarge when it exceeds the client's Maximum Packet
// Size. On an error buf is as it was.
func (c *client) encodeTo(pk *packets.Packet, buf *bytes.Buffer) error {
	if pk.Expiry > 0 {
		pk.Properties.MessageExpiryInterval = uint32(max(1, pk.Expiry-time.Now().Unix())) // [MQTT-3.3.2-6]
	}
	pk.ProtocolVersion = c.version
	pk.Mods.MaxSize = c.maxPacket
	pk.Mods.DisallowProblemInfo = c.noProblemInfo // [MQTT-3.1.2-29]
	pk.Mods.AllowResponseInfo = true              // never set on a CONNACK here: no Response Information
	start := buf.Len()
	if err := encode(pk, buf); err != nil {
		buf.Truncate(start)
		return err
	}
	if pk.Mods.MaxSize > 0 && uint32(buf.Len()-start) > pk.Mods.MaxSize {
		buf.Truncate(start)
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}
	return nil
}

// writeEncoded writes packets encoded by encodeTo, all in one write;
// errConnClosed once the connection is closing, checked under the write
// lock, so that nothing follows the DISCONNECT that closes it.
func (c *client) writeEncoded(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isClosed() {
		return errConnClosed
	}
	_, err := c.rc.Write(b)
	return err
}

// writeBytes writes encoded packets in one write, after any write under
// way (wmu).
func (c *client) writeBytes(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.rc.Write(b)
	return err
}

// serveConn runs the MQTT connection nc, accepted by listener lid, from
// its CONNECT to its end, and calls ended with why it ended. It returns
// once the connection is refused, or accepted and handed on.
//
// A connection has one goroutine at a time. The one that waits between
// packets does nothing else: it is started for that (fresh, with Go's
// smallest stack, 2 KB), reads the first bytes of the next packet in a
// shallow call chain and allocates nothing before it has them. Then the
// packets that have arrived are read and processed by a worker: a
// goroutine whose stack has grown for that already, parked after an
// earlier burst (of any connection), or else the waiting goroutine
// itself. When nothing more has arrived, the worker starts a new waiting
// goroutine for the connection and parks (a few are kept) or ends. So the
// deep stacks belong to the few connections that are busy, not to every
// idle one. The CONNECT (with the token check) runs on the listener's
// goroutine, which then becomes a worker too.
func (n *Node) serveConn(lid string, nc net.Conn, ended func(net.Conn, error)) {
	n.connWG.Add(1)
	c := &client{n: n, listener: lid, ended: ended}
	c.rc.Conn = nc
	if err := n.connect(c); err != nil {
		c.stop()
		n.connWG.Done()
		ended(nc, err)
		return
	}
	c.waitFn = c.waitPacket
	if c.rc.buffered() {
		c.burst()
	} else {
		c.next(nil)
	}
	n.workers.stay()
}

// next hands the connection, whose packets so far have all been
// processed, to a new waiting goroutine, or ends it (err, or a
// connection that is closing).
func (c *client) next(err error) {
	if err != nil || c.isClosed() {
		c.end(err)
		return
	}
	go c.waitFn()
}

// waitPacket waits for the first bytes of the next packet (the deadline
// set after the last packet bounds the wait), then has them processed.
// It is the first function of a waiting goroutine: until its wait is
// over, keep it shallow and allocation-free.
//
// What it read is nothing but whole plain PUBACKs (pubacks, the live
// case: a client acknowledges a PUBLISH or two at a time) it processes
// itself, and waits again: no hand-off to a worker, no new waiting
// goroutine. Anything else goes to a worker.
func (c *client) waitPacket() {
	for {
		if err := c.rc.wait(); err != nil {
			c.end(err)
			return
		}
		if !c.pubacks() {
			c.n.workers.run(c)
			return
		}
		if c.isClosed() {
			c.end(nil)
			return
		}
		c.refreshDeadline() // for the next packet
	}
}

// pubackSize is the size of a PUBACK without a reason code: its fixed
// header (0x40), remaining length 2, the packet ID. MQTT 5 leaves the
// reason code out when it is 0x00 (success) and there are no properties.
const pubackSize = 4

// pubacks processes, on the waiting goroutine, what wait read when it is
// nothing but whole PUBACKs of pubackSize (the codec would decode each to
// its packet ID and reason code 0x00, and receive would call
// session.puback with them), and reports whether it was; anything else
// (another packet, a part of one, a PUBACK with a reason code) is left
// for readPackets, on a worker. It keeps the reader's framing and counts
// (connReader.frame, read) as readPacket would.
func (c *client) pubacks() bool {
	r := &c.rc
	b := r.small[r.sr:r.sw]
	if r.state != frameHeader || r.pre != nil || r.ahead != nil || len(b) == 0 || len(b)%pubackSize != 0 {
		return false
	}
	for i := 0; i < len(b); i += pubackSize {
		if b[i] != packets.Puback<<4 || b[i+1] != pubackSize-2 {
			return false
		}
	}
	r.frame(b)
	r.sr = r.sw
	for i := 0; i < len(b); i += pubackSize {
		r.read++
		c.sess.puback(uint16(b[i+2])<<8|uint16(b[i+3]), 0)
	}
	return true
}

// burst reads and processes the packets that have arrived, then hands
// the connection on.
func (c *client) burst() {
	c.next(c.readPackets())
}

// end ends an open connection: the socket is closed and the session
// told (it finishes on its runner: acks, hand-backs, unregistration).
func (c *client) end(err error) {
	c.stop()
	c.n.log.Debug("client disconnected", "err", err, "client_id", telemetry.Clip(c.id), "listener", c.listener)
	c.n.connectionEnded(c)
	c.n.connected.Add(-1)
	c.n.connWG.Done()
	c.ended(c.rc.Conn, err)
}

// workers keeps up to max goroutines whose stacks have grown to what
// their task takes, parked, for the next task (so that a task does not
// cost the growth of a new stack). The node has two pools: one processes
// bursts of packets of any connection, the other runs session steps.
type workers[T any] struct {
	ch   chan T
	do   func(T)
	idle atomic.Int32
	max  int32
	done <-chan struct{} // parked workers end
}

func newWorkers[T any](max int, do func(T), done <-chan struct{}) *workers[T] {
	return &workers[T]{ch: make(chan T), do: do, max: int32(max), done: done}
}

// run does t on a parked worker, or else on the calling goroutine, which
// then stays as a worker (see stay).
func (w *workers[T]) run(t T) {
	select {
	case w.ch <- t:
		return
	default:
	}
	w.do(t)
	w.stay()
}

// start does t on a parked worker, or else on a new goroutine, which then
// stays as a worker: for callers that must not block.
func (w *workers[T]) start(t T) {
	select {
	case w.ch <- t:
		return
	default:
	}
	go func() {
		w.do(t)
		w.stay()
	}()
}

// stay parks the calling goroutine as a worker, doing the tasks handed to
// it, while fewer than max are parked; it returns when that many are, or
// when the node stops.
func (w *workers[T]) stay() {
	for {
		if w.idle.Add(1) > w.max {
			w.idle.Add(-1)
			return
		}
		select {
		case t := <-w.ch:
			w.idle.Add(-1)
			w.do(t)
		case <-w.done:
			w.idle.Add(-1)
			return
		}
	}
}

// readPackets reads and processes the packets that have arrived, one at
// a time, and returns when no byte of a further packet has arrived
// (nil), when the connection is closing (nil), or with the error that
// ends the connection.
func (c *client) readPackets() error {
	for {
		pk, err := c.readPacket()
		if err != nil {
			c.codecPanicked(&pk, err)
			return err
		}
		if err := c.receive(pk); err != nil {
			return err
		}
		if c.isClosed() {
			return nil
		}
		c.refreshDeadline() // for the next packet
		if !c.rc.buffered() {
			return nil
		}
	}
}

// deadlineSlack is how much later than one and a half keep alive
// intervals after a packet a connection's deadline may fall: the
// deadline moves only when it would come earlier than that, so that a
// busy connection (a PUBACK every few milliseconds) does not reset the
// socket's two deadline timers for each packet.
const deadlineSlack = 500 * time.Millisecond

// refreshDeadline makes the connection's deadline (reads and writes) fall
// between one and a half keep alive intervals from now and deadlineSlack
// after that ([MQTT-3.1.2-22]: never before); keep alive 0 means no
// deadline (set once: it clears the CONNECT's). It runs on the
// connection's reading goroutine, the only one that uses c.deadline.
func (c *client) refreshDeadline() {
	ka := c.keepalive
	if ka == 0 {
		if c.deadline != noDeadline {
			c.deadline = noDeadline
			_ = c.rc.SetDeadline(time.Time{})
		}
		return
	}
	need := time.Now().Add(time.Duration(ka) * 1500 * time.Millisecond)
	if c.deadline > 0 && need.UnixNano() <= c.deadline {
		return
	}
	at := need.Add(deadlineSlack)
	c.deadline = at.UnixNano()
	_ = c.rc.SetDeadline(at)
}

// noDeadline is client.deadline once the connection has no deadline.
const noDeadline = -1

// errCodecPanic marks a packet on which mochi's packet codec panicked.
var errCodecPanic = errors.New("pushserver: the packet codec panicked")

// readPacket reads the next packet: the fixed header, the remaining
// length (at most Config.MaxPacketSize in all, [MQTT-3.2.2-15]), then the
// body, which the codec decodes; it counts the packet as read by rc.
//
// The codec decodes bytes from untrusted sockets, and it can panic: mochi
// v2.7.9's SubscribeDecode reads past the end of an MQTT 5 SUBSCRIBE whose
// last filter has no options byte (an index out of range), which would
// end the whole process, every connection with it. A panic raised in the
// codec is taken as a malformed packet instead: the error wraps
// packets.ErrMalformedPacket and errCodecPanic (the caller counts and
// logs it, codecPanicked), pk has the packet's fixed header, and only
// this connection ends. A panic raised anywhere else is a bug, not an
// outsider's packet: it goes on.
func (c *client) readPacket() (pk packets.Packet, err error) {
	b, err := c.rc.ReadByte()
	if err != nil {
		return pk, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return pk, err
	}
	if !fromClient(fh.Type) {
		return pk, fmt.Errorf("%w: packet type %d from a client", packets.ErrProtocolViolation, fh.Type)
	}
	if fh.Remaining, _, err = packets.DecodeLength(&c.rc); err != nil {
		return pk, err
	}
	if limit := c.n.cfg.MaxPacketSize; limit > 0 && int64(fh.Remaining)+1 > limit {
		return pk, packets.ErrPacketTooLarge
	}
	pk.ProtocolVersion = c.version
	pk.FixedHeader = fh
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(&c.rc, body); err != nil {
		return pk, err
	}
	defer func() {
		if r := recover(); r != nil {
			if !panickedInCodec() {
				panic(r)
			}
			pk = packets.Packet{FixedHeader: fh, ProtocolVersion: c.version}
			err = fmt.Errorf("%w: %w: %s", packets.ErrMalformedPacket, errCodecPanic, telemetry.Clip(fmt.Sprint(r)))
		}
	}()
	if err = decode(&pk, body); err == nil {
		c.rc.read++
	}
	return pk, err
}

// codecPackage is the import path of mochi's packet codec.
const codecPackage = "github.com/mochi-mqtt/server/v2/packets"

// panickedInCodec reports, when called by a deferred function during a
// panic, whether the panic was raised in mochi's packet codec: whether
// the first frame below the panic outside the runtime and the standard
// library is the codec's.
func panickedInCodec() bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	below := false // below runtime.gopanic
	for {
		f, more := frames.Next()
		pkg := funcPackage(f.Function)
		switch {
		case f.Function == "runtime.gopanic":
			below = true
		case !below:
		case pkg == codecPackage:
			return true
		case !strings.Contains(strings.SplitN(pkg, "/", 2)[0], "."): // runtime, standard library
		default:
			return false
		}
		if !more {
			return false
		}
	}
}

// funcPackage returns the import path of the package of a function named
// as runtime.Frame.Function names it ("path/pkg.(*T).Method").
func funcPackage(fn string) string {
	slash := strings.LastIndexByte(fn, '/') + 1
	if dot := strings.IndexByte(fn[slash:], '.'); dot >= 0 {
		return fn[:slash+dot]
	}
	return fn
}

// codecPanicked counts and logs, with bounded fields only, a packet on
// which the codec panicked (err from readPacket wraps errCodecPanic);
// other errors it leaves alone. The connection ends, as for any packet
// the codec cannot decode; no DISCONNECT is sent.
func (c *client) codecPanicked(pk *packets.Packet, err error) {
	if !errors.Is(err, errCodecPanic) {
		return
	}
	c.n.m.codecPanics.Inc()
	c.n.log.Warn("malformed packet: the packet codec panicked; connection closed",
		"client_id", telemetry.Clip(c.id), "listener", c.listener, "remote", c.remote(),
		"packet", packetSummary(pk), "remaining", pk.FixedHeader.Remaining, "version", c.version,
		"error", err)
}

// receive processes one packet of an open connection. An error ends the
// connection; one that is an MQTT 5 reason code is sent to an MQTT 5
// client in a DISCONNECT first.
func (c *client) receive(pk packets.Packet) error {
	var err error
	switch pk.FixedHeader.Type {
	case packets.Publish:
		err = c.publish(pk)
	case packets.Puback:
		c.sess.puback(pk.PacketID, pk.ReasonCode)
	case packets.Pingreq:
		err = c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}) // [MQTT-3.12.4-1]
	case packets.Subscribe:
		err = c.subscribe(pk)
	case packets.Unsubscribe:
		err = c.unsubscribe(pk)
	case packets.Disconnect:
		err = c.disconnected(pk)
	case packets.Connect:
		err = packets.ErrProtocolViolationSecondConnect // [MQTT-3.1.0-2]
	case packets.Pubrec:
		// The server never sends QoS 2: no PUBLISH of this ID waits for
		// a PUBREC. [MQTT-4.3.3-7]
		err = c.writePacket(ack(packets.Pubrel, pk.PacketID, packets.ErrPacketIdentifierNotFound))
	case packets.Pubrel:
		// QoS 2 PUBLISHes are refused (below): none waits for a PUBREL.
		err = c.writePacket(ack(packets.Pubcomp, pk.PacketID, packets.ErrPacketIdentifierNotFound))
	case packets.Pubcomp:
	case packets.Auth:
		// No enhanced authentication: the token is in the CONNECT.
		if code := pk.AuthValidate(); code != packets.CodeSuccess {
			err = code
		}
	}
	if err == nil {
		return nil
	}
	var code packets.Code
	if errors.As(err, &code) && c.version == 5 && code.Code >= packets.ErrUnspecifiedError.Code {
		c.disconnect(code, "")
	}
	// The packet's type only: never the packet (a second CONNECT holds a
	// password, a PUBLISH a payload).
	c.n.log.Warn("error processing packet", "err", telemetry.Clip(err.Error()), "client_id", telemetry.Clip(c.id),
		"listener", c.listener, "packet", packetSummary(&pk))
	return err
}

// ack returns an acknowledgement of type typ for packet ID pid with an
// MQTT 5 reason code (an MQTT 3.1.1 encoding leaves it out).
func ack(typ byte, pid uint16, code packets.Code) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: pid, ReasonCode: code.Code}
	if typ == packets.Pubrel {
		pk.FixedHeader.Qos = 1
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		pk.Properties.ReasonString = code.Reason
	}
	return pk
}

// disconnected processes the client's DISCONNECT: the connection ends.
func (c *client) disconnected(pk packets.Packet) error {
	if pk.Properties.SessionExpiryIntervalFlag && pk.Properties.SessionExpiryInterval > 0 {
		return packets.ErrProtocolViolationZeroNonZeroExpiry // the CONNECT's was 0 [MQTT-3.14.2-2]
	}
	if pk.ReasonCode == packets.CodeDisconnectWillMessage.Code {
		// There is no will to send (CONNECTs with one are refused).
		return packets.CodeDisconnectWillMessage
	}
	c.stop() // [MQTT-3.14.4-2]
	return nil
}

// publish processes a PUBLISH of the client: only a device's answer on
// its own responses topic is taken (forwardResponse), at QoS 0 or 1:
//
//   - QoS 2 or the retain flag is a protocol error here (the CONNACK
//     said maximum QoS 1, retain not available): MQTT 5 clients get
//     DISCONNECT 0x9B / 0x9A, 3.1.1 clients are disconnected;
//   - a topic the client may not publish to: QoS 0 is dropped, QoS 1
//     gets PUBACK 0x87 in MQTT 5 and closes an MQTT 3.1.1 connection
//     (which has no negative PUBACK);
//   - an answer is acknowledged once it is completed, in arrival order
//     (forwardResponse).
func (c *client) publish(pk packets.Packet) error {
	if code := pk.PublishValidate(0); code != packets.CodeSuccess { // no topic aliases
		return code
	}
	switch {
	case pk.FixedHeader.Qos > 1:
		return packets.ErrQosNotSupported
	case pk.FixedHeader.Retain:
		return packets.ErrRetainNotSupported
	case !topicAllowed(c.sess.role, c.id, pk.TopicName, true):
		switch {
		case pk.FixedHeader.Qos == 0:
			return nil
		case c.version < 5:
			return packets.ErrNotAuthorized
		}
		return c.writePacket(ack(packets.Puback, pk.PacketID, packets.ErrNotAuthorized))
	}
	if !c.n.forwardResponse(c, pk) || pk.FixedHeader.Qos == 0 {
		return nil // held: the completer acknowledges it
	}
	return c.writePacket(ack(packets.Puback, pk.PacketID, packets.CodeSuccess)) // [MQTT-4.3.2-4]
}

// validFilter reports whether filter is a well-formed topic filter: not
// empty ([MQTT-4.7.3-1]), # only last ([MQTT-4.7.1-2]), + a whole level.
func validFilter(filter string) bool {
	if filter == "" {
		return false
	}
	for _, level := range strings.Split(filter, "/") {
		if level != "#" && level != "+" && strings.ContainsAny(level, "+#") {
			return false
		}
	}
	if k := strings.IndexByte(filter, '#'); k >= 0 && k != len(filter)-1 {
		return false
	}
	return true
}

// subscribe processes a SUBSCRIBE. Each filter is granted QoS 1, or
// refused in its SUBACK:
//
//	malformed filter                                0x8F (3.1.1: 0x80)
//	QoS 0 or 2 (an entry leaves a mailbox only on   0x87 (0x80)
//	a PUBACK), or not the identity's own topic
//	(topicAllowed: no #, $share/…, $SYS/…)
//	beyond Config.MaxSubscriptions                  0x97 (0x80)
//
// The subscriptions take effect once the SUBACK is written
// (session.subscribeDone), so that nothing is published on them before
// it.
func (c *client) subscribe(pk packets.Packet) error {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	s := c.sess
	reasons := make([]byte, len(pk.Filters))
	var want []int // the filters to grant, quota permitting
	for i, sub := range pk.Filters {
		switch {
		case !validFilter(sub.Filter):
			reasons[i] = packets.ErrTopicFilterInvalid.Code
		case sub.Qos != 1 || !topicAllowed(s.role, c.id, sub.Filter, false):
			reasons[i] = packets.ErrNotAuthorized.Code
		default:
			want = append(want, i)
		}
	}
	filters := make([]string, len(want))
	for j, i := range want {
		filters[j] = pk.Filters[i].Filter
	}
	for j, ok := range s.subscribed(filters, c.n.cfg.MaxSubscriptions) {
		reasons[want[j]] = packets.ErrQuotaExceeded.Code
		if ok {
			reasons[want[j]] = packets.CodeGrantedQos1.Code // [MQTT-3.9.3-1]
		}
	}
	if c.version < 5 {
		for i, r := range reasons {
			if r > packets.CodeGrantedQos2.Code {
				reasons[i] = packets.ErrUnspecifiedError.Code // 3.1.1: 0x80 failure
			}
		}
	}
	err := c.writePacket(packets.Packet{ // [MQTT-3.8.4-1]
		FixedHeader: packets.FixedHeader{Type: packets.Suback},
		PacketID:    pk.PacketID, // [MQTT-3.8.4-2]
		ReasonCodes: reasons,     // [MQTT-3.8.4-6]
		Properties:  packets.Properties{User: pk.Properties.User},
	})
	if err != nil {
		return err
	}
	s.subscribeDone() // no retained messages to send: retain is not available
	return nil
}

// unsubscribe processes an UNSUBSCRIBE: the UNSUBACK says, for each
// filter, whether it was subscribed.
func (c *client) unsubscribe(pk packets.Packet) error {
	if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	filters := make([]string, len(pk.Filters))
	for i, f := range pk.Filters {
		filters[i] = f.Filter
	}
	removed := c.sess.unsubscribed(filters)
	reasons := make([]byte, len(filters))
	for i := range filters { // [MQTT-3.10.4-6] [MQTT-3.11.3-1]
		reasons[i] = packets.CodeNoSubscriptionExisted.Code
		if removed[i] {
			reasons[i] = packets.CodeSuccess.Code
		}
	}
	return c.writePacket(packets.Packet{ // [MQTT-3.10.4-4]
		FixedHeader: packets.FixedHeader{Type: packets.Unsuback},
		PacketID:    pk.PacketID, // [MQTT-3.10.4-5]
		ReasonCodes: reasons,     // [MQTT-3.11.3-2]
		Properties:  packets.Properties{User: pk.Properties.User},
	})
}
