package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Session keeps one identity connected to the push server that owns it.
// It asks the gateway for the owner (GET /v1/connect/{identity}) before
// every connection attempt, so a refusal (CONNACK 0x03) or a lost
// connection after a ring change leads to the new owner. paho's own
// reconnect is off for that reason: it would retry the same server.
type Session struct {
	Identity string
	Token    string
	API      *API
	// Filter is subscribed at QoS 1 on every connection; Handler gets its
	// messages (paho acknowledges after Handler returns).
	Filter  string
	Handler mqtt.MessageHandler
	// TLS is used for mqtts:// URLs (nil: system roots).
	TLS *tls.Config
	Log *slog.Logger

	mu     sync.Mutex
	client mqtt.Client
	online atomic.Bool
	// Connects counts successful connections; Refusals failed attempts.
	Connects, Refusals atomic.Int64
	ready              chan struct{}
	readyOnce          sync.Once
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
	opts := mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(s.Identity).
		SetUsername(s.Identity).
		SetPassword(s.Token).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(false).
		SetConnectTimeout(5 * time.Second).
		// A PINGREQ after 6 s without traffic (paho checks every 1.5 s),
		// given up after 3 s: a device leaves a frozen push server within
		// about 12 s (DESIGN §8; the fault suite measures it).
		SetKeepAlive(6 * time.Second).
		SetPingTimeout(3 * time.Second).
		SetWriteTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if s.TLS != nil {
		opts.SetTLSConfig(s.TLS)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(6 * time.Second) {
		c.Disconnect(0)
		return fmt.Errorf("connect to %s timed out", broker)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to %s: %w", broker, err)
	}
	sub := c.Subscribe(s.Filter, 1, s.Handler)
	if !sub.WaitTimeout(5*time.Second) || sub.Error() != nil {
		c.Disconnect(0)
		return fmt.Errorf("subscribe %s: %v", s.Filter, sub.Error())
	}
	if st, ok := sub.(*mqtt.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				c.Disconnect(0)
				return fmt.Errorf("subscribe %s refused with 0x%02x", s.Filter, code)
			}
		}
	}
	s.mu.Lock()
	s.client = c
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
		c.Disconnect(100)
	}
}

// Publish sends payload at QoS 1 and waits (bounded) for the PUBACK.
func (s *Session) Publish(topic string, payload []byte) error {
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil || !s.online.Load() {
		return ErrOffline
	}
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("publish to %s: no PUBACK within 10s", topic)
	}
	return tok.Error()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
