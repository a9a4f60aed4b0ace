package main

import (
	"bytes"
	"github.com/iotgw/gateway/internal/telemetry"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// deniedPrefix marks a subscription that OnSubscribe refused (QoS 0 or
// 2): OnACLCheck denies any filter starting with "$", so mochi answers the
// filter with a SUBACK failure (0x87 not authorized in MQTT 5, 0x80 in
// 3.1.1) and never subscribes it.
const deniedPrefix = "$gw-denied/"

// hook is the gateway's mochi hook: authentication, ownership, ACL, the
// session life cycle, PUBACK tracking and device responses. It replaces
// mochi's auth ledger; with no other auth hook, mochi denies anything this
// hook does not allow.
//
// Every method runs on the goroutine that is reading one connection's
// packets (a short-lived one, see conn.go; or, for OnPacketEncode, on
// whoever writes to the connection) and returns quickly, except OnPublish
// of a device response, which waits for RabbitMQ's confirm (bounded by
// ConfirmTimeout) before mochi may send the PUBACK: it holds up only that
// device's connection. Most methods are called by the node itself
// (conn.go: the connection's beginning and end, SUBSCRIBE, UNSUBSCRIBE),
// the others (OnPacketRead, OnPublish with its OnACLCheck, OnPacketEncode)
// by mochi.
type hook struct {
	mqtt.HookBase
	n *Node
}

// ID names the hook.
func (h *hook) ID() string { return "gateway" }

// Provides lists the hook methods in use.
func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnPublish, mqtt.OnPacketRead, mqtt.OnPacketEncode:
		return true
	}
	return false
}

// Reason codes of refused connections (MQTT 5; connackCode gives the
// MQTT 3.1.1 return code of each).
var (
	refuseBadCredentials = packets.ErrBadUsernameOrPassword    // 0x86 / 0x04
	refuseClientID       = packets.ErrClientIdentifierNotValid // 0x85 / 0x02
	refuseNotAuthorized  = packets.ErrNotAuthorized            // 0x87 / 0x05
	refuseUnavailable    = packets.ErrServerUnavailable        // 0x88 / 0x03
	refuseUseAnother     = packets.ErrUseAnotherServer         // 0x9C / 0x03
)

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

// sendRefusal sends the CONNACK that refuses cl with the MQTT 5 reason
// code code, or its MQTT 3.1.1 return code (connackCode), with props
// (MQTT 5 only); for a 3.1.1 client with no return code that fits, it
// sends nothing and the caller closes the connection.
func (n *Node) sendRefusal(cl *mqtt.Client, code packets.Code, props *packets.Properties) error {
	v := cl.Properties.ProtocolVersion
	c, ok := connackCode(v, code)
	if !ok {
		return nil
	}
	if v < 5 {
		props = nil
	}
	return n.server.SendConnack(cl, c, false, props)
}

// OnConnect authenticates the connection and checks ownership, answering
// a refusal with its own CONNACK (mochi sends none when OnConnect fails):
//
//   - username is the identity, password a token (HS256) whose sub is the
//     identity, and the client ID is the identity;
//   - no will message (it would bypass the ACL);
//   - this node owns the identity (ring.OwnsDuringGrace); otherwise MQTT 5
//     gets 0x9C with the owner's URL as server reference and 3.1.1 gets
//     0x03.
//
// It also marks the session clean, so that mochi never keeps it after the
// connection.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	_, err := h.admit(cl, pk)
	return err
}

// admit is OnConnect's decision. It returns the token's claims, verified
// once per connection: the node's own connection loop (conn.go) passes
// them on to start the session instead of verifying the token again.
func (h *hook) admit(cl *mqtt.Client, pk packets.Packet) (*auth.Claims, error) {
	n := h.n
	identity := string(pk.Connect.Username)
	claims, err := n.authenticate(pk)
	if err != nil {
		n.log.Info("connection refused: bad credentials", "client_id", telemetry.Clip(identity), "remote", cl.Net.Remote, "err", err)
		return nil, h.refuse(cl, refuseBadCredentials, "")
	}
	if err := h.place(cl, pk, claims); err != nil {
		return nil, err
	}
	return claims, nil
}

// place checks everything but the token: the client ID, no will, and
// that this node owns the identity.
func (h *hook) place(cl *mqtt.Client, pk packets.Packet, claims *auth.Claims) error {
	n := h.n
	identity := string(pk.Connect.Username)
	log := n.log.With("client_id", telemetry.Clip(identity), "remote", cl.Net.Remote)
	if pk.Connect.ClientIdentifier != claims.Subject {
		log.Info("connection refused: client ID is not the identity", "mqtt_client_id", telemetry.Clip(pk.Connect.ClientIdentifier))
		return h.refuse(cl, refuseClientID, "")
	}
	if pk.Connect.WillFlag {
		log.Info("connection refused: will messages are not supported")
		return h.refuse(cl, refuseNotAuthorized, "")
	}
	if n.stopping.Load() {
		owner, ok := n.ring.Owner(identity)
		if ok && owner.Node != n.node {
			n.m.redirects.Inc()
			return h.refuse(cl, refuseUseAnother, owner.URL)
		}
		return h.refuse(cl, refuseUnavailable, "")
	}
	if !n.ring.OwnsDuringGrace(n.node, identity) {
		owner, ok := n.ring.Owner(identity)
		if !ok {
			log.Warn("connection refused: the ring is empty")
			return h.refuse(cl, refuseUnavailable, "")
		}
		n.m.redirects.Inc()
		log.Debug("connection refused: another node owns the identity", "owner", owner.Node)
		return h.refuse(cl, refuseUseAnother, owner.URL)
	}
	cl.Properties.Clean = true
	return nil
}

// refuse sends a refusing CONNACK (sendRefusal: MQTT 3.1.1 clients get
// the 3.1.1 return code) and returns its code as the error that makes
// mochi close the connection.
func (h *hook) refuse(cl *mqtt.Client, code packets.Code, serverRef string) error {
	_ = h.n.sendRefusal(cl, code, &packets.Properties{ServerReference: serverRef})
	return code
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

// OnConnectAuthenticate allows the connection only when its credentials
// are valid and the client ID is the identity (OnConnect, which runs
// first, has also checked ownership).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	claims, err := h.n.authenticate(pk)
	return err == nil && cl.ID == claims.Subject && pk.Connect.ClientIdentifier == claims.Subject
}

// OnACLCheck allows a device to publish on its own responses topic and an
// identity to subscribe to its own topics (protocol.MayPublish and
// MaySubscribe); it denies everything else. cl.ID is the identity (see
// OnConnect).
//
// The token's role decides which side of the table applies: clients and
// devices share one identity space, so a client token named "dev-1" must
// not read devices/dev-1/commands, and a device token may not read
// clients/…/results. Operator tokens have no MQTT topics.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.n.sessionOf(cl)
	if s == nil {
		return false
	}
	return topicAllowed(s.role, cl.ID, topic, write)
}

// topicAllowed is the ACL table of DESIGN §5 with the token's role.
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

// OnSessionEstablish runs after authentication, just before mochi looks
// for an existing session of the same client ID. Mochi would move that
// session's subscriptions and in-flight messages to the new connection
// (for a client without clean start); sessions are always fresh here, so
// they are dropped first (and an MQTT 3.1.1 connection is closed; MQTT 5
// gets DISCONNECT 0x8E from mochi). The client ID is the authenticated
// identity, so only the same identity ever takes a session over.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if old, ok := h.n.server.Clients.Get(cl.ID); ok && old != cl {
		if old.Properties.ProtocolVersion < 5 {
			// Mochi would send it a DISCONNECT, which 3.1.1 does not
			// have: close it instead.
			old.Stop(packets.ErrSessionTakenOver)
		}
		h.n.server.UnsubscribeClient(old)
		old.ClearInflights()
	}
}

// OnSessionEstablished starts the session: its delivery goroutine and the
// timer that ends it when the token expires.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	claims, err := h.n.authenticate(pk)
	if err != nil { // expired between CONNECT and now
		disconnect(cl, packets.ErrNotAuthorized, "")
		return
	}
	h.start(cl, claims)
}

// start starts the session of an established connection whose token
// gave claims.
func (h *hook) start(cl *mqtt.Client, claims *auth.Claims) {
	if exp := claims.Expires(); !exp.IsZero() && !time.Now().Before(exp) { // expired since CONNECT
		disconnect(cl, packets.ErrNotAuthorized, "")
		return
	}
	s := newSession(h.n, cl, claims.Expires())
	s.role = claims.Role
	h.n.addSession(s)
	h.n.sessWG.Add(1)
	s.start()
	h.n.log.Debug("session established", "client_id", s.identity, "remote", cl.Net.Remote,
		"protocol", cl.Properties.ProtocolVersion, "window", s.window)
}

// OnDisconnect ends the session.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	h.n.connectionEnded(cl)
	if s := h.n.removeSession(cl); s != nil {
		s.close()
		h.n.log.Debug("session ended", "client_id", s.identity, "err", err)
	}
}

// OnSubscribe marks QoS 0 and QoS 2 subscriptions as denied: an entry is
// removed from a mailbox only on a PUBACK, so only QoS 1 is granted.
func (h *hook) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for i, sub := range pk.Filters {
		if sub.Qos != 1 {
			pk.Filters[i].Filter = deniedPrefix + sub.Filter
		}
	}
	return pk
}

// OnSubscribed records the granted filters; streaming for them starts
// once the SUBACK is written (Node.subscribe, session.subscribeDone).
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	s := h.n.sessionOf(cl)
	if s == nil {
		return
	}
	var granted []string
	for i, sub := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] == packets.CodeGrantedQos1.Code {
			granted = append(granted, sub.Filter)
		}
	}
	if len(granted) > 0 {
		s.subscribed(granted)
	}
}

// OnUnsubscribed stops matching the removed filters.
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	s := h.n.sessionOf(cl)
	if s == nil {
		return
	}
	filters := make([]string, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		filters = append(filters, f.Filter)
	}
	s.unsubscribed(filters)
}

// OnPacketRead sees every packet as it is read, before mochi processes
// it:
//
//   - a PUBACK completes the delivery of the mailbox entry sent with that
//     packet ID on this connection (tracked by the session, not by mochi's
//     in-flight map, which mochi shares with inbound packet IDs), whatever
//     its MQTT 5 reason code: a client that refuses a message will never
//     take it. A command its device refuses (reason code 0x80 or more)
//     ends rejected instead of delivered (mailbox.Store.Refuse);
//   - a PUBLISH with QoS 2 or the retain flag is a protocol error here
//     (the CONNACK said maximum QoS 1, retain not available): MQTT 5
//     clients get DISCONNECT 0x9B / 0x9A, 3.1.1 clients are disconnected;
//   - a QoS 1 PUBLISH of an MQTT 3.1.1 client on a topic it may not
//     publish to closes the connection (MQTT 5 clients get PUBACK 0x87
//     from mochi).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback:
		if s := h.n.sessionOf(cl); s != nil {
			if pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
				// The client refuses the message; it will never take it,
				// so the delivery is complete all the same (a command
				// ends rejected).
				h.n.log.Info("client refused a message", "client_id", s.identity, "reason", pk.ReasonCode)
			}
			s.puback(pk.PacketID, pk.ReasonCode)
		}
	case packets.Publish:
		switch {
		case pk.FixedHeader.Qos > 1:
			disconnect(cl, packets.ErrQosNotSupported, "")
			return pk, packets.ErrRejectPacket
		case pk.FixedHeader.Retain:
			disconnect(cl, packets.ErrRetainNotSupported, "")
			return pk, packets.ErrRejectPacket
		case cl.Properties.ProtocolVersion < 5 && pk.FixedHeader.Qos > 0 && !protocol.MayPublish(cl.ID, pk.TopicName):
			// Mochi would answer with a DISCONNECT packet, which MQTT
			// 3.1.1 does not have: close the connection instead.
			cl.Stop(packets.ErrNotAuthorized)
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, nil
}

// OnPublish forwards a device response (the ACL has let through only
// devices/{cl.ID}/responses) and decides on its PUBACK; see
// forwardResponse.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return pk, h.n.forwardResponse(cl, pk)
}

// OnPacketEncode corrects what mochi writes:
//
//   - a CONNACK never says session present (sessions are always fresh);
//   - a successful MQTT 5 CONNACK announces the limits that mochi leaves
//     out (retain not available, the maximum packet size, session expiry
//     0);
//   - a PUBACK that mochi gives the reason code 0x01 ("granted QoS 1",
//     not a PUBACK code) gets 0x00 success.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		pk.SessionPresent = false
		if cl.Properties.ProtocolVersion < 5 && pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
			// Every refusal goes through sendRefusal; should one not,
			// a 3.1.1 client still gets a 3.1.1 return code.
			c, _ := connackCode(cl.Properties.ProtocolVersion, packets.Code{Code: pk.ReasonCode})
			if c.Code == 0 {
				c = packets.Err3ServerUnavailable
			}
			pk.ReasonCode = c.Code
		}
		if cl.Properties.ProtocolVersion == 5 && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
			p := &pk.Properties
			p.RetainAvailable, p.RetainAvailableFlag = 0, true
			p.MaximumPacketSize = uint32(h.n.cfg.MaxPacketSize)
			p.SessionExpiryInterval, p.SessionExpiryIntervalFlag = 0, true
		}
	case packets.Puback:
		if pk.ReasonCode == packets.CodeGrantedQos1.Code {
			pk.ReasonCode = packets.CodeSuccess.Code
		}
	}
	return pk
}
