package main

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// The CONNECT: what a connection must show to be accepted (the table in
// the package doc), and the CONNACK.

// Reason codes of refused connections (MQTT 5; connackCode gives the
// MQTT 3.1.1 return code of each).
var (
	refuseBadCredentials = packets.ErrBadUsernameOrPassword    // 0x86 / 0x04
	refuseClientID       = packets.ErrClientIdentifierNotValid // 0x85 / 0x02
	refuseNotAuthorized  = packets.ErrNotAuthorized            // 0x87 / 0x05
	refuseUnavailable    = packets.ErrServerUnavailable        // 0x88 / 0x03
	refuseUseAnother     = packets.ErrUseAnotherServer         // 0x9C / 0x03
)

// receiveMaximum is how many QoS 1 PUBLISHes (device answers) a client
// may have unacknowledged (the CONNACK's Receive Maximum).
const receiveMaximum = 64

// connect reads the CONNECT of c and, when the connection is accepted,
// establishes the session and writes the CONNACK (the connection is then
// open). A refusal writes its CONNACK (or none, for a malformed CONNECT
// of an MQTT 3.1.1 client) and returns why.
func (n *Node) connect(c *client) error {
	// The CONNECT is read whole, with memory that grows with what has
	// arrived, before it is decoded.
	if err := c.rc.preread(int(min(maxConnectSize, n.cfg.MaxPacketSize-1)), n.m.connecting.Inc, n.m.connecting.Dec); err != nil {
		return fmt.Errorf("read connection: %w", err)
	}
	// preread has checked that the packet is a CONNECT. [MQTT-3.1.0-1]
	pk, err := c.readPacket()
	if err != nil {
		c.codecPanicked(&pk, err)
		return fmt.Errorf("read connection: %w", err)
	}
	c.parseConnect(pk)
	if n.connected.Load() >= n.maxClients {
		_ = c.refuse(packets.ErrServerBusy, "") // 0x89 / 0x03
		return packets.ErrServerBusy
	}
	if code := validateConnect(pk); code != packets.CodeSuccess {
		// MQTT 3.1.1 clients get a 3.1.1 return code, or no CONNACK for
		// a malformed CONNECT. [MQTT-3.2.2-7] [MQTT-3.1.4-6]
		return c.refuse(code, "")
	}
	claims, err := n.admit(c, pk) // writes its own refusal [MQTT-3.1.4-2]
	if err != nil {
		return err
	}
	c.refreshDeadline()
	return n.establish(c, claims)
}

// parseConnect keeps what the connection needs of its CONNECT (not the
// packet: it holds the token).
func (c *client) parseConnect(pk packets.Packet) {
	c.version = pk.ProtocolVersion
	// A copy: the codec's strings share the packet's bytes, which hold
	// the token.
	c.id = strings.Clone(pk.Connect.ClientIdentifier)
	c.keepalive = pk.Connect.Keepalive // [MQTT-3.2.2-22]
	if c.version == 5 {
		p := &pk.Properties
		c.maxPacket = p.MaximumPacketSize
		c.receiveMax = p.ReceiveMaximum
		c.noProblemInfo = p.RequestProblemInfoFlag && p.RequestProblemInfo == 0
	}
}

// validateConnect checks the CONNECT as MQTT requires (the codec's
// ConnectValidate, and the server's capabilities).
func validateConnect(pk packets.Packet) packets.Code {
	if code := pk.ConnectValidate(); code != packets.CodeSuccess { // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
		return code
	}
	switch {
	case pk.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "":
		return packets.ErrClientIdentifierNotValid // 3.1.1: 0x02 [MQTT-3.1.3-8]
	case pk.ProtocolVersion < 4:
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	case pk.Connect.WillFlag && pk.Connect.WillQos > 1:
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	case pk.Connect.WillFlag && pk.Connect.WillRetain:
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	}
	return packets.CodeSuccess
}

// connackCode returns the reason code of the CONNACK that refuses a
// client of protocol version v with the MQTT 5 reason code code: code
// itself for MQTT 5, and for MQTT 3.1.1 (and 3.1), whose CONNACK knows
// only the return codes 0x01 to 0x05, the one that fits:
//
//	MQTT 5                                             MQTT 3.1.1
//	0x84 unsupported version, 0x82 protocol version    0x01 unacceptable protocol version
//	0x85 client identifier not valid                   0x02 identifier rejected
//	0x86 bad user name or password, 0x8C bad           0x04 bad user name or password
//	     authentication method
//	0x87 not authorized, 0x8A banned, 0x9A retain      0x05 not authorized
//	     not supported, 0x9B QoS not supported
//	0x81 malformed packet, 0x82 any other protocol     none: the connection is closed without a
//	     error                                         CONNACK ([MQTT-4.8.0-1])
//	anything else (0x88, 0x89, 0x9C, 0x97, 0x80, …)    0x03 server unavailable
//
// ok is false when there is no CONNACK to send.
func connackCode(v byte, code packets.Code) (_ packets.Code, ok bool) {
	if v >= 5 || code.Code < packets.ErrUnspecifiedError.Code {
		return code, true
	}
	if code == packets.ErrProtocolViolationProtocolVersion {
		return packets.Err3UnsupportedProtocolVersion, true
	}
	switch code.Code {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return packets.Err3UnsupportedProtocolVersion, true
	case packets.ErrClientIdentifierNotValid.Code:
		return packets.Err3ClientIdentifierNotValid, true
	case packets.ErrBadUsernameOrPassword.Code, packets.ErrBadAuthenticationMethod.Code:
		return packets.ErrMalformedUsernameOrPassword, true // 0x04: "bad user name or password" in 3.1.1
	case packets.ErrNotAuthorized.Code, packets.ErrBanned.Code,
		packets.ErrRetainNotSupported.Code, packets.ErrQosNotSupported.Code:
		return packets.Err3NotAuthorized, true
	case packets.ErrMalformedPacket.Code, packets.ErrProtocolViolation.Code:
		return packets.Code{}, false
	}
	return packets.Err3ServerUnavailable, true
}

// refuse writes the CONNACK that refuses c with the MQTT 5 reason code
// code (and, MQTT 5 only, the server reference serverRef), or its MQTT
// 3.1.1 return code (connackCode); for a 3.1.1 client with no return
// code that fits, it writes nothing. It returns code, the error that
// closes the connection.
func (c *client) refuse(code packets.Code, serverRef string) error {
	v := max(c.version, 4)
	rc, ok := connackCode(v, code)
	if !ok {
		return code
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: rc.Code} // [MQTT-3.2.2-6]
	if v == 5 {
		pk.Properties = packets.Properties{ReasonString: code.Reason, ServerReference: serverRef, ReceiveMaximum: receiveMaximum}
	}
	_ = c.writePacket(pk)
	return code
}

// admit authenticates the connection and checks ownership, writing its
// own refusing CONNACK:
//
//   - username is the identity, password a token (HS256) whose sub is the
//     identity, and the client ID is the identity;
//   - no will message (it would bypass the ACL);
//   - this node owns the identity (ring.OwnsDuringGrace); otherwise MQTT 5
//     gets 0x9C with the owner's URL as server reference and 3.1.1 gets
//     0x03.
//
// It returns the token's claims, verified once per connection.
func (n *Node) admit(c *client, pk packets.Packet) (*auth.Claims, error) {
	identity := string(pk.Connect.Username)
	log := n.log.With("client_id", telemetry.Clip(identity), "remote", c.remote())
	claims, err := n.authenticate(pk)
	if err != nil {
		log.Info("connection refused: bad credentials", "err", err)
		return nil, c.refuse(refuseBadCredentials, "")
	}
	if pk.Connect.ClientIdentifier != claims.Subject {
		log.Info("connection refused: client ID is not the identity", "mqtt_client_id", telemetry.Clip(pk.Connect.ClientIdentifier))
		return nil, c.refuse(refuseClientID, "")
	}
	if pk.Connect.WillFlag {
		log.Info("connection refused: will messages are not supported")
		return nil, c.refuse(refuseNotAuthorized, "")
	}
	if n.stopping.Load() {
		owner, ok := n.ring.Owner(identity)
		if ok && owner.Node != n.node {
			n.m.redirects.Inc()
			return nil, c.refuse(refuseUseAnother, owner.URL)
		}
		return nil, c.refuse(refuseUnavailable, "")
	}
	if !n.ring.OwnsDuringGrace(n.node, identity) {
		owner, ok := n.ring.Owner(identity)
		if !ok {
			log.Warn("connection refused: the ring is empty")
			return nil, c.refuse(refuseUnavailable, "")
		}
		n.m.redirects.Inc()
		log.Debug("connection refused: another node owns the identity", "owner", owner.Node)
		return nil, c.refuse(refuseUseAnother, owner.URL)
	}
	return claims, nil
}

// authenticate checks the CONNECT's credentials: username and password
// present, a valid token whose subject is the username.
func (n *Node) authenticate(pk packets.Packet) (*auth.Claims, error) {
	if !pk.Connect.UsernameFlag || !pk.Connect.PasswordFlag {
		return nil, auth.ErrMissing
	}
	claims, err := n.verifier.Verify(string(pk.Connect.Password))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pk.Connect.Username, []byte(claims.Subject)) {
		return nil, auth.ErrClaims
	}
	return claims, nil
}

// topicAllowed is the ACL table of DESIGN §5 with the token's role: a
// device publishes on its own responses topic and subscribes to its own
// commands, a client subscribes to its own results (protocol.MayPublish
// and MaySubscribe); everything else is denied.
//
// The token's role decides which side of the table applies: clients and
// devices share one identity space, so a client token named "dev-1" must
// not read devices/dev-1/commands, and a device token may not read
// clients/…/results. Operator tokens have no MQTT topics.
func topicAllowed(role auth.Role, identity, topic string, write bool) bool {
	name := topic
	if strings.HasSuffix(name, "/+") { // the one wildcard allowed: classify as a name
		name = name[:len(name)-1] + "x"
	}
	t, err := protocol.ParseTopic(name)
	if err != nil {
		return false
	}
	switch role {
	case auth.RoleDevice:
		if t.Kind != protocol.TopicDeviceCommands && t.Kind != protocol.TopicDeviceResponse {
			return false
		}
	case auth.RoleClient:
		if t.Kind != protocol.TopicClientResults {
			return false
		}
	default:
		return false
	}
	if write {
		return protocol.MayPublish(identity, topic)
	}
	return protocol.MaySubscribe(identity, topic)
}

// establish takes the identity over from an earlier connection (MQTT 5:
// DISCONNECT 0x8E; 3.1.1: closed), starts the session and writes the
// CONNACK, one connection of the identity at a time: connections of one
// identity that arrive together (a device reconnecting in a loop, two
// devices with one identity) would otherwise each take over the same
// earlier one, and leave a connection open that is not the node's
// current session, which no wake signal reaches. Sessions are always
// fresh: session present is 0, nothing is inherited.
func (n *Node) establish(c *client, claims *auth.Claims) error {
	mu := &n.establishLocks[stripe(c.id, len(n.establishLocks))]
	mu.Lock()
	defer mu.Unlock()
	if exp := claims.Expires(); !exp.IsZero() && !time.Now().Before(exp) { // expired since it was verified
		return c.refuse(refuseBadCredentials, "")
	}
	n.capKeepAlive(c)
	// The new session is the identity's current one, and the connection
	// counted, before the earlier one is closed and before the CONNACK:
	// the end of the earlier session sees that a newer one lives here
	// (it leaves the registration to it), and the next CONNECT counts
	// this connection. Nothing is sent on the session before a
	// SUBSCRIBE, which is read after the CONNACK.
	old := n.current(c.id)
	s := newSession(n, c, claims)
	c.sess = s
	n.connected.Add(1)
	n.sessWG.Add(1)
	n.addSession(s)
	if s.expires != 0 {
		n.expiries.add(s)
	}
	if old != nil {
		// Nothing more is sent on it. [MQTT-3.1.4-3]
		old.closing()
		old.cl.disconnect(packets.ErrSessionTakenOver, "")
	}
	if err := c.writePacket(n.connack(c)); err != nil { // [MQTT-3.2.0-1]
		n.connected.Add(-1)
		s.close() // its runner ends it
		return fmt.Errorf("ack connection packet: %w", err)
	}
	c.advance(connOpen)
	s.start()
	n.log.Debug("session established", "client_id", s.identity, "remote", c.remote(),
		"protocol", c.version, "window", s.window)
	return nil
}

// connack is the CONNACK that accepts c: session present 0 (sessions
// are always fresh), and, for MQTT 5, the server's limits: Receive
// Maximum, maximum QoS 1, retain not available, the maximum packet size,
// session expiry 0, and the Server Keep Alive when the server chose it.
func (n *Node) connack(c *client) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: packets.CodeSuccess.Code}
	if c.version == 5 {
		p := &pk.Properties
		p.ReceiveMaximum = receiveMaximum
		p.MaximumQos, p.MaximumQosFlag = 1, true // [MQTT-3.2.2-9]
		p.RetainAvailable, p.RetainAvailableFlag = 0, true
		p.MaximumPacketSize = uint32(n.cfg.MaxPacketSize)
		p.SessionExpiryInterval, p.SessionExpiryIntervalFlag = 0, true
		if c.serverKeepalive {
			p.ServerKeepAlive, p.ServerKeepAliveFlag = c.keepalive, true // [MQTT-3.1.2-21]
		}
	}
	return pk
}

// capKeepAlive gives an MQTT 5 client whose keep alive is longer than
// Config.MaxKeepAlive, or none, the maximum instead: the CONNACK then
// carries it as Server Keep Alive [MQTT-3.2.2-21], and the connection's
// deadline follows it.
func (n *Node) capKeepAlive(c *client) {
	limit := uint16(min(n.cfg.MaxKeepAlive/time.Second, 65535))
	if c.version < 5 || limit == 0 {
		return
	}
	if ka := c.keepalive; ka == 0 || ka > limit {
		c.keepalive = limit
		c.serverKeepalive = true
	}
}
