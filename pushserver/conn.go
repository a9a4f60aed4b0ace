package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
)

// One MQTT connection, with small stacks.
//
// Mochi's own Server.EstablishConnection holds two goroutines for every
// connection for its whole life: the one that reads (parked, between
// packets, under attachClient and Client.Read, whose frames alone are
// 4.6 KB because mochi passes its 808-byte packets.Packet by value) and
// Client.WriteLoop (parked in a 1.8 KB frame: a 4 KB stack). Handling one
// packet takes that reading goroutine about 18 KB deep, so its stack
// grows to 32 KB; the garbage collector halves a stack only while less
// than a quarter of it is in use, so it comes back to 16 KB and no
// further. That is 20 KB of stack per idle connection, more than the
// whole budget of an idle session.
//
// serveConn does what EstablishConnection does, with mochi's exported
// API, in another shape:
//
//   - a connection has one goroutine at a time. The one that waits
//     between packets does nothing else: it is started for that (fresh,
//     with Go's smallest stack, 2 KB), reads the first bytes of the next
//     packet in a shallow call chain (about 0.7 KB) and allocates nothing
//     before it has them;
//   - then the packets that have arrived are read and processed, as deep
//     as mochi needs, by a worker: a goroutine whose stack has grown for
//     that already, parked after an earlier burst (of any connection),
//     or else the waiting goroutine itself. When nothing more has
//     arrived, the worker starts a new waiting goroutine for the
//     connection and parks (a few are kept) or ends. So the deep stacks
//     belong to the few connections that are busy, not to every idle
//     one. The CONNECT (with the token check) runs on the listener's
//     goroutine, which then becomes a worker too;
//   - there is no WriteLoop: mochi queues packets for it only when it
//     routes a PUBLISH to subscribers, which never happens here (every
//     PUBLISH is a device response, which OnPublish marks as not to be
//     routed; retained messages and the inline client are off; $SYS
//     topics cannot be subscribed). Everything else mochi writes, and
//     every mailbox entry, is written directly (Client.WritePacket).
//
// Packets are read by mochi (Client.ReadFixedHeader, Client.ReadPacket
// with the OnPacketRead hook), in order, one at a time, as its own read
// loop does, and processed by mochi (Server.InjectPacket), except
// SUBSCRIBE and UNSUBSCRIBE, which the node processes as mochi does but
// records only in the session (see subscribe).

// conn is one established connection, handed from goroutine to goroutine.
type conn struct {
	n     *Node
	cl    *mqtt.Client
	rc    connReader
	ended func(net.Conn, error) // called once, when the connection has ended

	// waitFn is c.waitPacket, made once: starting a waiting goroutine
	// allocates nothing (an allocation can take a goroutine deeper than
	// its smallest stack).
	waitFn func()
}

// serveConn runs the MQTT connection nc, accepted by listener lid, from
// its CONNECT to its end (what mochi's Server.EstablishConnection does;
// see above), and calls ended with why it ended. It returns once the
// connection is refused, or established and handed on.
func (n *Node) serveConn(lid string, nc net.Conn, ended func(net.Conn, error)) {
	s := n.server
	s.Listeners.ClientsWg.Add(1)
	c := &conn{n: n, ended: ended}
	c.rc.Conn = nc
	c.cl = s.NewClient(&c.rc, lid, "", false)
	if ok, err := n.connect(c.cl, &c.rc, lid); !ok {
		c.cl.Stop(nil)
		s.Listeners.ClientsWg.Done()
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
// processed, to a new waiting goroutine, or ends it (err, or a client
// that is closed: mochi's read loop returns nil then).
func (c *conn) next(err error) {
	if err != nil || c.cl.Closed() {
		c.end(err)
		return
	}
	go c.waitFn()
}

// waitPacket waits for the first bytes of the next packet (the deadline
// set after the last packet bounds the wait), then has them processed.
// It is the first function of a waiting goroutine: until its wait is
// over, keep it shallow and allocation-free.
func (c *conn) waitPacket() {
	if err := c.rc.wait(); err != nil {
		c.end(err)
		return
	}
	c.n.workers.run(c)
}

// burst reads and processes the packets that have arrived, then hands
// the connection on.
func (c *conn) burst() {
	c.next(c.n.readPackets(c.cl, &c.rc))
}

// end ends an established connection.
func (c *conn) end(err error) {
	c.n.disconnected(c.cl, err)
	c.cl.Stop(nil)
	c.n.server.Listeners.ClientsWg.Done()
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

// connect reads the CONNECT and, when the connection is accepted, sends
// the CONNACK and establishes the session: the first half of mochi's
// attachClient, with the hooks of the node called directly (the node's
// server has no other hook). It reports whether the session is
// established; if not, the error says why.
func (n *Node) connect(cl *mqtt.Client, rc *connReader, lid string) (bool, error) {
	s := n.server
	// The CONNECT is read whole, with memory that grows with what has
	// arrived, before mochi reads it (mochi would allocate the announced
	// length at once).
	if err := rc.preread(int(min(maxConnectSize, n.cfg.MaxPacketSize-1)), n.m.connecting.Inc, n.m.connecting.Dec); err != nil {
		return false, fmt.Errorf("read connection: %w", err)
	}
	// preread has checked that the packet is a CONNECT. [MQTT-3.1.0-1]
	pk, err := readPacket(cl, rc)
	if err != nil {
		n.codecPanicked(cl, &pk, err)
		return false, fmt.Errorf("read connection: %w", err)
	}
	if pk.FixedHeader.Type != packets.Connect {
		return false, fmt.Errorf("read connection: %w", packets.ErrProtocolViolationRequireFirstConnect) // [MQTT-3.1.0-1]
	}

	cl.ParseConnect(lid, pk)
	// ParseConnect keeps the username as a slice of the packet, which
	// would keep the whole CONNECT (the token too) for the life of the
	// connection.
	cl.Properties.Username = bytes.Clone(cl.Properties.Username)
	if atomic.LoadInt64(&s.Info.ClientsConnected) >= s.Options.Capabilities.MaximumClients {
		_ = n.sendRefusal(cl, packets.ErrServerBusy, nil) // 0x89 / 0x03
		return false, packets.ErrServerBusy
	}
	if code := n.validateConnect(cl, pk); code != packets.CodeSuccess {
		// MQTT 3.1.1 clients get a 3.1.1 return code, or no CONNACK for
		// a malformed CONNECT.
		if err := n.sendRefusal(cl, code, nil); err != nil {
			return false, fmt.Errorf("invalid connection send ack: %w", err)
		}
		return false, code // [MQTT-3.2.2-7] [MQTT-3.1.4-6]
	}
	// admit is OnConnect and OnConnectAuthenticate in one, verifying the
	// token once: it sends its own refusing CONNACK. [MQTT-3.1.4-2]
	claims, err := n.hook.admit(cl, pk)
	if err != nil {
		return false, err
	}
	refreshDeadline(cl)

	atomic.AddInt64(&s.Info.ClientsConnected, 1)
	if err := n.establish(cl, pk, claims); err != nil {
		atomic.AddInt64(&s.Info.ClientsConnected, -1)
		return false, err
	}
	refreshDeadline(cl)
	return true, nil
}

// establish takes the client ID over from an earlier connection, makes cl
// its client, sends the CONNACK and starts the session, one connection of
// the ID at a time: connections of one ID that arrive together (a device
// reconnecting in a loop, two devices with one identity) would otherwise
// each take over the same earlier one, and leave a connection open that
// is neither mochi's client of the ID nor the node's current session,
// which no wake signal reaches.
func (n *Node) establish(cl *mqtt.Client, pk packets.Packet, claims *auth.Claims) error {
	mu := &n.establishLocks[stripe(cl.ID, len(n.establishLocks))]
	mu.Lock()
	defer mu.Unlock()
	n.hook.OnSessionEstablish(cl, pk)
	n.capKeepAlive(cl)
	n.attach(cl)
	// Sessions are always fresh: session present is 0 (and OnPacketEncode
	// would make it so).
	if err := n.server.SendConnack(cl, packets.CodeSuccess, false, nil); err != nil { // [MQTT-3.2.0-1]
		n.detach(cl)
		return fmt.Errorf("ack connection packet: %w", err)
	}
	n.hook.start(cl, claims)
	return nil
}

// capKeepAlive gives an MQTT 5 client whose keep alive is longer than
// Config.MaxKeepAlive, or none, the maximum instead: SendConnack then
// carries it as Server Keep Alive [MQTT-3.2.2-21], and the connection's
// deadline follows it.
func (n *Node) capKeepAlive(cl *mqtt.Client) {
	limit := uint16(min(n.cfg.MaxKeepAlive/time.Second, 65535))
	if cl.Properties.ProtocolVersion < 5 || limit == 0 {
		return
	}
	if ka := cl.State.Keepalive; ka == 0 || ka > limit {
		cl.State.Keepalive = limit
		cl.State.ServerKeepalive = true
	}
}

// validateConnect is mochi's check of a CONNECT packet.
func (n *Node) validateConnect(cl *mqtt.Client, pk packets.Packet) packets.Code {
	code := pk.ConnectValidate() // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code != packets.CodeSuccess {
		return code
	}
	caps := n.server.Options.Capabilities
	switch {
	case cl.Properties.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "":
		return packets.ErrClientIdentifierNotValid // 3.1.1: 0x02 [MQTT-3.1.3-8]
	case cl.Properties.ProtocolVersion < caps.MinimumProtocolVersion:
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	case cl.Properties.Will.Qos > caps.MaximumQos:
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	case cl.Properties.Will.Retain && caps.RetainAvailable == 0x00:
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	}
	return code
}

// attach makes cl the client of its ID, taking over from an earlier
// connection of the same ID (which OnSessionEstablish has already
// emptied: sessions are always fresh, so nothing is inherited).
func (n *Node) attach(cl *mqtt.Client) {
	s := n.server
	if old, ok := s.Clients.Get(cl.ID); ok && old != cl {
		_ = s.DisconnectClient(old, packets.ErrSessionTakenOver) // [MQTT-3.1.4-3]
		s.UnsubscribeClient(old)
		old.ClearInflights()
	} else if atomic.LoadInt64(&s.Info.ClientsConnected) > atomic.LoadInt64(&s.Info.ClientsMaximum) {
		atomic.AddInt64(&s.Info.ClientsMaximum, 1)
	}
	mu := n.clientLock(cl.ID)
	mu.Lock()
	s.Clients.Add(cl) // [MQTT-4.1.0-1]
	mu.Unlock()
}

// detach forgets cl as the client of its ID, unless a newer connection
// has taken the ID over; it reports whether cl was the client.
func (n *Node) detach(cl *mqtt.Client) bool {
	mu := n.clientLock(cl.ID)
	mu.Lock()
	defer mu.Unlock()
	if cur, ok := n.server.Clients.Get(cl.ID); !ok || cur != cl {
		return false
	}
	n.server.UnsubscribeClient(cl)
	n.server.Clients.Delete(cl.ID) // [MQTT-4.1.0-2]
	return true
}

// clientLock orders attach and detach of one client ID.
func (n *Node) clientLock(id string) *sync.Mutex {
	return &n.clientLocks[stripe(id, len(n.clientLocks))]
}

// readPackets reads and processes the packets that have arrived, one at
// a time, as mochi's Client.Read does, and returns when no byte of a
// further packet has arrived (nil), when the client is closed (nil), or
// with the error that ends the connection.
func (n *Node) readPackets(cl *mqtt.Client, rc *connReader) error {
	for {
		pk, err := readPacket(cl, rc)
		if err != nil {
			n.codecPanicked(cl, &pk, err)
			return err
		}
		if err := n.receivePacket(cl, pk); err != nil {
			return err
		}
		if cl.Closed() {
			return nil
		}
		refreshDeadline(cl) // for the next packet
		if !rc.buffered() {
			return nil
		}
	}
}

// errCodecPanic marks a packet on which mochi's packet codec panicked.
var errCodecPanic = errors.New("pushserver: the packet codec panicked")

// readPacket reads the next packet from cl with mochi's codec
// (Client.ReadFixedHeader, then Client.ReadPacket, which decodes it and
// calls the OnPacketRead hook), and counts it as read by rc.
//
// The codec decodes bytes from untrusted sockets, and it can panic: mochi
// v2.7.9's SubscribeDecode reads past the end of an MQTT 5 SUBSCRIBE whose
// last filter has no options byte (an index out of range), which ended
// the whole process, every connection with it. A panic raised in the
// codec is taken as a malformed packet instead: the error wraps
// packets.ErrMalformedPacket and errCodecPanic (the caller counts and
// logs it, codecPanicked), pk has the packet's fixed header, and only
// this connection ends. A panic raised anywhere else (a hook, the node's
// own code) is a bug, not an outsider's packet: it goes on.
func readPacket(cl *mqtt.Client, rc *connReader) (pk packets.Packet, err error) {
	var fh packets.FixedHeader
	if err := cl.ReadFixedHeader(&fh); err != nil {
		return pk, err
	}
	defer func() {
		if r := recover(); r != nil {
			if !panickedInCodec() {
				panic(r)
			}
			pk = packets.Packet{FixedHeader: fh, ProtocolVersion: cl.Properties.ProtocolVersion}
			err = fmt.Errorf("%w: %w: %s", packets.ErrMalformedPacket, errCodecPanic, telemetry.Clip(fmt.Sprint(r)))
		}
	}()
	pk, err = cl.ReadPacket(&fh)
	if err == nil {
		rc.read++
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

// codecPanicked counts and logs, with bounded fields only, a packet read
// from cl on which mochi's codec panicked (err from readPacket wraps
// errCodecPanic); other errors it leaves alone. The connection ends, as
// for any packet mochi cannot decode; no DISCONNECT is sent.
func (n *Node) codecPanicked(cl *mqtt.Client, pk *packets.Packet, err error) {
	if !errors.Is(err, errCodecPanic) {
		return
	}
	n.m.codecPanics.Inc()
	n.log.Warn("malformed packet: the packet codec panicked; connection closed",
		"client_id", telemetry.Clip(cl.ID), "listener", cl.Net.Listener, "remote", cl.Net.Remote,
		"packet", packetSummary(pk), "remaining", pk.FixedHeader.Remaining, "version", cl.Properties.ProtocolVersion,
		"error", err)
}

// receivePacket processes one packet read from cl, as mochi's
// receivePacket does: an error that is an MQTT 5 reason code is sent to
// the client in a DISCONNECT; every error ends the connection. SUBSCRIBE
// and UNSUBSCRIBE are processed by the node (subscribe, unsubscribe),
// every other packet by mochi.
func (n *Node) receivePacket(cl *mqtt.Client, pk packets.Packet) error {
	s := n.server
	var err error
	switch pk.FixedHeader.Type {
	case packets.Subscribe:
		err = n.subscribe(cl, pk)
	case packets.Unsubscribe:
		err = n.unsubscribe(cl, pk)
	default:
		if err = s.InjectPacket(cl, pk); err == nil {
			// InjectPacket counts the packet as received; ReadPacket
			// has already.
			atomic.AddInt64(&s.Info.PacketsReceived, -1)
			if pk.FixedHeader.Type == packets.Publish {
				atomic.AddInt64(&s.Info.MessagesReceived, -1)
			}
		}
	}
	if err == nil {
		return nil
	}
	if code, ok := err.(packets.Code); ok && cl.Properties.ProtocolVersion == 5 && code.Code >= packets.ErrUnspecifiedError.Code { //nolint:errorlint // as mochi
		_ = s.DisconnectClient(cl, code)
	}
	// The packet's type only: never the packet (a second CONNECT holds a
	// password, a PUBLISH a payload).
	s.Log.Warn("error processing packet", "err", err, "client_id", telemetry.Clip(cl.ID), "listener", cl.Net.Listener,
		"packet", packetSummary(&pk))
	return err
}

// subscribe processes a SUBSCRIBE as mochi's processSubscribe does (the
// same checks of each filter, with the hook's OnSubscribe and
// OnACLCheck, the same SUBACK), except that a granted subscription is
// recorded by the session only, not in mochi's topic index and the
// client's subscription map: only mochi's routing of PUBLISHes reads
// those, and it never routes here (see the top of this file), while they
// would cost every session about 2 KB. A filter that would take the
// session beyond Config.MaxSubscriptions is refused (0x97 quota exceeded;
// 3.1.1: 0x80). The subscriptions take effect once
// the SUBACK is written (session.subscribeDone), so that nothing is
// published on them before it.
func (n *Node) subscribe(cl *mqtt.Client, pk packets.Packet) error {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	pk = n.hook.OnSubscribe(cl, pk)
	code := packets.CodeSuccess
	if _, ok := cl.State.Inflight.Get(pk.PacketID); ok {
		code = packets.ErrPacketIdentifierInUse
	}
	caps := n.server.Options.Capabilities
	reasons := make([]byte, len(pk.Filters))
	sess := n.sessionOf(cl)
	var added []string // filters this SUBSCRIBE adds to the session's
	overQuota := func(filter string) bool {
		if sess == nil || sess.subscribedTo(filter) || slices.Contains(added, filter) {
			return false
		}
		if sess.subscriptions()+len(added) >= n.cfg.MaxSubscriptions {
			return true
		}
		added = append(added, filter)
		return false
	}
	for i, sub := range pk.Filters {
		switch {
		case code != packets.CodeSuccess:
			reasons[i] = code.Code // NB 3.9.3 Non-normative 0x91
			continue
		case !mqtt.IsValidFilter(sub.Filter, false):
			reasons[i] = packets.ErrTopicFilterInvalid.Code
		case sub.NoLocal && mqtt.IsSharedFilter(sub.Filter):
			reasons[i] = packets.ErrProtocolViolationInvalidSharedNoLocal.Code // [MQTT-3.8.3-4]
		case !n.hook.OnACLCheck(cl, sub.Filter, false):
			reasons[i] = packets.ErrNotAuthorized.Code
			if caps.Compatibilities.ObscureNotAuthorized {
				reasons[i] = packets.ErrUnspecifiedError.Code
			}
		case overQuota(sub.Filter):
			reasons[i] = packets.ErrQuotaExceeded.Code // 3.1.1: 0x80 (below)
		default:
			reasons[i] = min(sub.Qos, caps.MaximumQos) // [MQTT-3.2.2-9] [MQTT-3.9.3-1] [MQTT-3.8.4-7]
		}
		if reasons[i] > packets.CodeGrantedQos2.Code && cl.Properties.ProtocolVersion < 5 { // MQTT 3.1.1
			reasons[i] = packets.ErrUnspecifiedError.Code
		}
	}
	ack := packets.Packet{ // [MQTT-3.8.4-1] [MQTT-3.8.4-5]
		FixedHeader: packets.FixedHeader{Type: packets.Suback},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6] [MQTT-3.8.4-2]
		ReasonCodes: reasons,     // [MQTT-3.8.4-6]
		Properties:  packets.Properties{User: pk.Properties.User},
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}
	n.hook.OnSubscribed(cl, pk, reasons)
	if err := cl.WritePacket(ack); err != nil {
		return err
	}
	// No retained messages to send: retain is not available.
	if s := n.sessionOf(cl); s != nil {
		s.subscribeDone()
	}
	return nil
}

// unsubscribe processes an UNSUBSCRIBE as mochi's processUnsubscribe
// does, with the session's subscriptions (see subscribe): the UNSUBACK
// says, for each filter, whether it was subscribed.
func (n *Node) unsubscribe(cl *mqtt.Client, pk packets.Packet) error {
	if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	code := packets.CodeSuccess
	if _, ok := cl.State.Inflight.Get(pk.PacketID); ok {
		code = packets.ErrPacketIdentifierInUse
	}
	s := n.sessionOf(cl)
	reasons := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters { // [MQTT-3.10.4-6] [MQTT-3.11.3-1]
		switch {
		case code != packets.CodeSuccess:
			reasons[i] = code.Code // NB 3.11.3 Non-normative 0x91
		case s != nil && s.subscribedTo(sub.Filter):
			reasons[i] = packets.CodeSuccess.Code
		default:
			reasons[i] = packets.CodeNoSubscriptionExisted.Code
		}
	}
	ack := packets.Packet{ // [MQTT-3.10.4-4]
		FixedHeader: packets.FixedHeader{Type: packets.Unsuback},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6]  [MQTT-3.10.4-5]
		ReasonCodes: reasons,     // [MQTT-3.11.3-2]
		Properties:  packets.Properties{User: pk.Properties.User},
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}
	n.hook.OnUnsubscribed(cl, pk) // [MQTT-3.10.4-2]
	return cl.WritePacket(ack)
}

// disconnected ends an established connection: the second half of
// mochi's attachClient. There is no will message to send: OnConnect
// refuses them.
func (n *Node) disconnected(cl *mqtt.Client, err error) {
	s := n.server
	if err != nil {
		cl.Stop(err)
	} else {
		cl.Properties.Will = mqtt.Will{} // [MQTT-3.14.4-3] [MQTT-3.1.2-10]
	}
	s.Log.Debug("client disconnected", "err", err, "client_id", telemetry.Clip(cl.ID), "remote", cl.Net.Remote, "listener", cl.Net.Listener)
	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
		(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	n.hook.OnDisconnect(cl, err, expire)
	if expire {
		cl.ClearInflights()
		n.detach(cl)
	}
	atomic.AddInt64(&s.Info.ClientsConnected, -1)
}

// refreshDeadline sets the connection's deadline to one and a half keep
// alive intervals from now, as mochi does before reading each packet
// ([MQTT-3.1.2-22]); keep alive 0 means no deadline.
func refreshDeadline(cl *mqtt.Client) {
	var expiry time.Time
	if ka := cl.State.Keepalive; ka > 0 {
		expiry = time.Now().Add(time.Duration(ka+ka/2) * time.Second)
	}
	_ = cl.Net.Conn.SetDeadline(expiry)
}

// readAheadSize is the size of the buffers a connection reads into while
// packets arrive. They come from a pool: an idle connection holds none.
const readAheadSize = 4096

var readAheadPool = sync.Pool{New: func() any { return new([readAheadSize]byte) }}

// connReader is the net.Conn given to mochi. It lets a connection's
// waiting goroutine wait for the next packet without a buffer of its own
// (wait reads into a small array in the connReader and keeps what it
// read for the next Reads), reads ahead into a pooled buffer only while
// bytes are arriving, and follows
// the MQTT framing of the bytes it hands to mochi's reader, so that
// buffered can tell whether any byte of a packet that mochi has not read
// yet is waiting in that reader.
//
// Reads happen on one goroutine at a time (the connection's waiting
// goroutine, then the worker that reads and processes); writes,
// deadlines and Close are the underlying connection's.
type connReader struct {
	net.Conn

	pre    []byte               // the first packet, read by preread (nil once handed out)
	pr     int                  // pre[pr:] is unread
	small  [16]byte             // what wait read
	sr, sw uint8                // small[sr:sw] is unread
	ahead  *[readAheadSize]byte // read ahead, not yet handed out (nil when empty)
	r, w   int                  // ahead[r:w] is unread

	// The framing of the bytes handed out (mochi's packets.DecodeLength).
	state   uint8
	shift   uint32
	length  uint32
	left    int    // bytes of the current packet's body not handed out
	started uint64 // packets whose first byte has been handed out
	read    uint64 // packets mochi has read (counted by its caller)
}

// States of connReader's framing.
const (
	frameHeader uint8 = iota // next byte starts a packet
	frameLength              // in the remaining length
	frameBody                // in the body (left bytes)
	frameBroken              // a malformed length: mochi ends the connection
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

// buffered reports whether a byte of a packet that mochi has not read yet
// is waiting: kept by wait, read ahead, or in mochi's reader.
func (c *connReader) buffered() bool {
	return c.pre != nil || c.sr < c.sw || c.ahead != nil || c.started > c.read
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
// bytes of body, whole, before mochi's reader sees it: into a buffer that
// grows with the bytes received, so that a client that announces a large
// CONNECT and sends little costs little (mochi's Client.ReadPacket
// allocates the announced length at once). The Reads then hand it to
// mochi. reading is called once the fixed header is read and its body
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

// Read hands mochi's reader what wait read, then what was read ahead,
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
// mochi's packets.DecodeLength does), then that many bytes of body.
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
