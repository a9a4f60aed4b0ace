package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// Message is one PUBLISH a session received.
type Message struct {
	Topic   string
	Payload []byte
	// TraceParent is the W3C trace context the push server sent with it
	// (the MQTT 5 user property "traceparent"), "" when none.
	TraceParent string
}

// Session keeps one identity connected to the push server that owns it,
// over MQTT 5 (eclipse/paho.golang), so that it gets and sends the
// traceparent user property. It asks the gateway for the owner (GET
// /v1/connect/{identity}) before every connection attempt, so a refusal
// (CONNACK 0x9C, use another server) or a lost connection after a ring
// change leads to the new owner.
type Session struct {
	Identity string
	Token    string
	API      *API
	// Filter is subscribed at QoS 1 on every connection; Handler gets its
	// messages (paho acknowledges after Handler returns).
	Filter  string
	Handler func(Message)
	// Refuse, when set, is asked first for each message: a reason code of
	// 0x80 or more refuses it with that PUBACK (MQTT 5: the device will
	// never take it) and Handler does not get it; 0 takes it.
	Refuse func(Message) byte
	// TLS is used for mqtts:// URLs (nil: system roots).
	TLS *tls.Config
	Log *slog.Logger

	mu     sync.Mutex
	client *paho.Client
	online atomic.Bool
	// Connects counts successful connections; Refusals failed attempts.
	Connects, Refusals atomic.Int64
	// connectedAt holds when the latest connections (at most
	// maxConnectTimes) were made and subscribed; under mu.
	connectedAt []time.Time
	ready       chan struct{}
	readyOnce   sync.Once
}

// maxConnectTimes bounds Session.ConnectTimes.
const maxConnectTimes = 64

// ConnectTimes returns when the latest connections (at most 64) were
// made and subscribed, oldest first.
func (s *Session) ConnectTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.connectedAt)
}

// ErrOffline is returned by Publish while the session is not connected.
var ErrOffline = errors.New("devicesim: not connected")

// Online reports whether the session is connected and subscribed.
func (s *Session) Online() bool { return s.online.Load() }

// Ready is closed once the session is first connected and subscribed.
func (s *Session) Ready() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready == nil {
		s.ready = make(chan struct{})
	}
	return s.ready
}

// Run connects and stays connected until ctx is done. pause, when it
// receives a duration, drops the connection and stays offline that long
// (the simulated reboot and churn).
func (s *Session) Run(ctx context.Context, pause <-chan time.Duration) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		lost := make(chan error, 1)
		err := s.connect(ctx, lost)
		if err != nil {
			s.Refusals.Add(1)
			if s.Log != nil {
				s.Log.Debug("connect failed", "client_id", s.Identity, "err", err)
			}
			sleep(ctx, backoff+time.Duration(rand.Int64N(int64(backoff))))
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		select {
		case <-ctx.Done():
			s.disconnect()
			return
		case <-lost:
			s.online.Store(false)
		case d := <-pause:
			s.disconnect()
			sleep(ctx, d)
		}
	}
}

func (s *Session) connect(ctx context.Context, lost chan<- error) error {
	owner, err := s.API.Connect(ctx, s.Identity, s.Token)
	if err != nil {
		return err
	}
	broker, err := brokerURL(owner.MQTTURL)
	if err != nil {
		return err
	}
	u, err := url.Parse(broker)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var conn net.Conn
	if u.Scheme == "ssl" {
		cfg := s.TLS
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		d := tls.Dialer{Config: cfg}
		conn, err = d.DialContext(dctx, "tcp", u.Host)
		if err == nil {
			conn = packets.NewThreadSafeConn(conn) // tls.Conn's writes are not safe to share
		}
	} else {
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", u.Host)
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", broker, err)
	}
	notify := func(err error) {
		select {
		case lost <- err:
		default:
		}
	}
	acks := &refusingSession{SessionManager: state.NewInMemory(), codes: map[uint16]byte{}}
	c := paho.NewClient(paho.ClientConfig{
		ClientID: s.Identity,
		Conn:     conn,
		Session:  acks,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			m := Message{Topic: pr.Packet.Topic, Payload: pr.Packet.Payload}
			if p := pr.Packet.Properties; p != nil {
				m.TraceParent = p.User.Get("traceparent")
			}
			if s.Refuse != nil {
				if code := s.Refuse(m); code >= 0x80 {
					acks.refuse(pr.Packet.PacketID, code)
					return true, nil
				}
			}
			if s.Handler != nil {
				s.Handler(m)
			}
			return true, nil
		}},
		OnClientError: notify,
		OnServerDisconnect: func(d *paho.Disconnect) {
			notify(fmt.Errorf("disconnected by the server: reason 0x%02x", d.ReasonCode))
		},
	})
	cctx, cancel := context.WithTimeout(ctx, 6*time.Second)
	defer cancel()
	ca, err := c.Connect(cctx, &paho.Connect{
		ClientID: s.Identity, CleanStart: true,
		// A PINGREQ after 6 s without traffic, given up when no PINGRESP
		// came by the next one: a device leaves a frozen push server
		// within about 12 s (DESIGN §8; the fault suite measures it).
		KeepAlive:    6,
		UsernameFlag: true, Username: s.Identity,
		PasswordFlag: true, Password: []byte(s.Token),
	})
	if err != nil {
		_ = conn.Close()
		if ca != nil {
			return fmt.Errorf("connect to %s refused with 0x%02x: %w", broker, ca.ReasonCode, err)
		}
		return fmt.Errorf("connect to %s: %w", broker, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.Filter, QoS: 1}}})
	switch {
	case sa != nil && len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80:
		_ = c.Disconnect(&paho.Disconnect{})
		return fmt.Errorf("subscribe %s refused with 0x%02x", s.Filter, sa.Reasons[0])
	case err != nil:
		_ = c.Disconnect(&paho.Disconnect{})
		return fmt.Errorf("subscribe %s: %w", s.Filter, err)
	}
	go func() {
		<-c.Done()
		notify(errors.New("connection closed"))
	}()
	s.mu.Lock()
	s.client = c
	s.connectedAt = append(s.connectedAt, time.Now())
	if len(s.connectedAt) > maxConnectTimes {
		s.connectedAt = s.connectedAt[1:]
	}
	if s.ready == nil {
		s.ready = make(chan struct{})
	}
	ready := s.ready
	s.mu.Unlock()
	s.online.Store(true)
	s.Connects.Add(1)
	s.readyOnce.Do(func() { close(ready) })
	return nil
}

func (s *Session) disconnect() {
	s.online.Store(false)
	s.mu.Lock()
	c := s.client
	s.client = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.Disconnect(&paho.Disconnect{})
	}
}

// Publish sends payload at QoS 1, with the user property traceparent when
// traceparent is not empty, and waits (bounded) for the PUBACK.
func (s *Session) Publish(topic string, payload []byte, traceparent string) error {
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil || !s.online.Load() {
		return ErrOffline
	}
	pb := &paho.Publish{Topic: topic, QoS: 1, Payload: payload}
	if traceparent != "" {
		pb.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: "traceparent", Value: traceparent}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, pb); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("publish to %s: no PUBACK within 10s", topic)
		}
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// refusingSession is paho's in-memory session whose PUBACK of a message
// the Session refused carries the refusal's reason code (paho's own
// PUBACK always carries 0).
type refusingSession struct {
	session.SessionManager
	mu    sync.Mutex
	conn  io.Writer
	codes map[uint16]byte // packet ID → reason code, until its PUBACK
}

func (r *refusingSession) ConAckReceived(conn io.Writer, c *packets.Connect, ca *packets.Connack) error {
	r.mu.Lock()
	r.conn = conn
	r.mu.Unlock()
	return r.SessionManager.ConAckReceived(conn, c, ca)
}

func (r *refusingSession) refuse(id uint16, code byte) {
	r.mu.Lock()
	r.codes[id] = code
	r.mu.Unlock()
}

// Ack sends the PUBACK of pb: the refusal's for a refused message, else
// paho's.
func (r *refusingSession) Ack(pb *packets.Publish) error {
	r.mu.Lock()
	code, refused := r.codes[pb.PacketID]
	delete(r.codes, pb.PacketID)
	conn := r.conn
	r.mu.Unlock()
	if !refused || pb.QoS != 1 || conn == nil {
		return r.SessionManager.Ack(pb)
	}
	_, err := (&packets.Puback{PacketID: pb.PacketID, ReasonCode: code, Properties: &packets.Properties{}}).WriteTo(conn)
	return err
}
