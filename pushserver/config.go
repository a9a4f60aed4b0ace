package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
)

// Defaults of the push server's own settings (the shared ones are in
// internal/config).
const (
	DefaultInflight      = 32
	DefaultMaxPacketSize = 256 << 10
	DefaultShedRate      = 100
	// DefaultMaxSubscriptions is Config.MaxSubscriptions when unset.
	DefaultMaxSubscriptions = 16
	DefaultSweepInterval    = 2 * time.Second
	// DefaultMaxKeepAlive is Config.MaxKeepAlive when unset.
	DefaultMaxKeepAlive   = 10 * time.Second
	DefaultShutdownShed   = 10 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	// fdHeadroom is how many file descriptors are kept for everything that
	// is not an MQTT client (Redis and AMQP connections, the metrics
	// listener, log files) when MaxClients is derived from RLIMIT_NOFILE.
	fdHeadroom = 256
)

// ErrNoSecret is returned when no auth secret is configured: the push
// server refuses to start without one.
var ErrNoSecret = errors.New("pushserver: GW_AUTH_SECRET is not set")

// Config configures a Node. The zero value of every field means its
// default, except AuthSecret, which is required.
type Config struct {
	// MQTTAddr is the MQTT listen address. Default 127.0.0.1:1884; port 0
	// picks a free port (see Node.Addr).
	MQTTAddr string
	// WSAddr (GW_MQTT_WS_ADDR) is where MQTT over WebSocket is served
	// (paths /mqtt and /, subprotocol mqtt; wss:// with TLSCert and
	// TLSKey; see websocket.go). Default empty: not served. Port 0 picks a
	// free port (see Node.WSAddr).
	WSAddr string
	// NodeID is the node's name in the ring. Default: the bound address.
	NodeID string
	// AdvertiseURL is the URL clients are sent to (server reference, GET
	// /v1/connect). Default mqtt://<bound address> (mqtts:// with TLS).
	AdvertiseURL string
	// Common holds RedisURL, AMQPURL and Namespace, which locate the
	// shared state. Defaults as in DESIGN §9.
	config.Common
	// Scale holds the fixed counts, Partitions (GW_PARTITIONS) and Queues
	// (GW_QUEUES), and the durability settings; defaults in package
	// config. The push server needs Partitions for the state; it declares
	// the whole AMQP topology (it publishes device results), whose fence
	// holds both counts, so Queues must be the namespace's too: with
	// other counts Start fails (amqpx.ErrCounts, naming both).
	config.Scale
	// AuthSecret is the HS256 key of the tokens. Required.
	AuthSecret string
	// MetricsAddr is where /metrics is served. Empty: no metrics listener
	// (run sets 127.0.0.1:0 by default).
	MetricsAddr string
	// TLSCert and TLSKey are PEM files; when both are set, MQTT is served
	// over TLS.
	TLSCert, TLSKey string
	// ConfirmTimeout bounds the wait for RabbitMQ's publisher confirm of a
	// device response (and the Redis lookup before it). Default 5s.
	ConfirmTimeout time.Duration
	// Inflight is the most unacknowledged PUBLISHes per session. Default
	// 32; a smaller MQTT 5 Receive Maximum of the client wins.
	Inflight int
	// MaxPacketSize is the largest MQTT packet accepted, in bytes.
	// Default 256 KiB.
	MaxPacketSize int64
	// MaxClients caps connected clients. Default (0): RLIMIT_NOFILE minus
	// a headroom; a larger value is lowered to that.
	MaxClients int
	// MaxSubscriptions (GW_MAX_SUBSCRIPTIONS) caps the subscriptions of
	// one session: a SUBSCRIBE filter that would add one beyond it gets a
	// SUBACK failure (MQTT 5: 0x97 quota exceeded; 3.1.1: 0x80), the
	// others of that SUBSCRIBE are granted as usual. Subscribing to a
	// filter the session has already does not count. Default 16.
	MaxSubscriptions int
	// ShedRate is how many sessions per second are closed when the node no
	// longer owns them (ring change). Default 100.
	ShedRate int
	// SweepInterval is how often the node reads its pending set, in case
	// a wake signal was lost. Every fifth sweep also re-reads the mailbox
	// of every subscribed session. Default 2s.
	SweepInterval time.Duration
	// ShutdownShed bounds the gradual closing of sessions at shutdown.
	// Default 10s (less if Shutdown's context ends sooner).
	ShutdownShed time.Duration
	// ConnectTimeout is how long a new connection may take to send its
	// CONNECT (TLS handshake included). Default 10s.
	ConnectTimeout time.Duration
	// MaxKeepAlive (GW_MAX_KEEPALIVE) is the longest keep alive an MQTT 5
	// client may use: one that asks for more, or for none, is told this
	// one in CONNACK (Server Keep Alive), so that it notices a push
	// server that stopped answering (frozen, cut off) within 1.5 × this
	// and reconnects elsewhere. MQTT 3.1.1 has no such property: those
	// clients should use 10 s or less themselves. Default 10s.
	MaxKeepAlive time.Duration
	// RingHeartbeat, RingTTL and RingGrace are passed to the ring
	// (ring.Options); zero means the ring's defaults (1s, 3s, 5s).
	RingHeartbeat, RingTTL, RingGrace time.Duration
	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger
	// Registry receives the node's metrics. Default: a new registry.
	Registry *prometheus.Registry
}

func (c *Config) ensureDefaults() {
	if c.MQTTAddr == "" {
		c.MQTTAddr = config.DefaultMQTTAddr
	}
	c.Common.SetDefaults()
	c.Scale.SetDefaults()
	if c.ConfirmTimeout <= 0 {
		c.ConfirmTimeout = config.DefaultConfirmTimeout
	}
	if c.Inflight <= 0 {
		c.Inflight = DefaultInflight
	}
	if c.Inflight > 65535 {
		c.Inflight = 65535
	}
	if c.MaxPacketSize <= 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.MaxPacketSize > 268435455+5 { // the largest MQTT packet
		c.MaxPacketSize = 268435455 + 5
	}
	if c.MaxSubscriptions <= 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if c.ShedRate <= 0 {
		c.ShedRate = DefaultShedRate
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.ShutdownShed <= 0 {
		c.ShutdownShed = DefaultShutdownShed
	}
	if c.MaxKeepAlive <= 0 {
		c.MaxKeepAlive = DefaultMaxKeepAlive
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
}

// maxClients returns the client limit: the configured one, but never
// more than the file limit allows.
func maxClients(configured int) int64 {
	limit := int64(fileLimit())
	allowed := limit - fdHeadroom
	if limit <= 2*fdHeadroom {
		allowed = limit / 2
	}
	if allowed < 1 {
		allowed = 1
	}
	if configured > 0 && int64(configured) < allowed {
		return int64(configured)
	}
	return allowed
}

// DefaultRingGrace is ring-grace (GW_RING_GRACE) when unset: how long the
// previous ring is honoured after a change before sessions are shed.
const DefaultRingGrace = 5 * time.Second

// flags is the binary's configuration: the Node's Config plus what only
// the process needs. Each setting is a flag and a GW_* variable of the
// same name (see bind).
type flags struct {
	Config
	config.Logging
	// RingGrace is ring-grace: 0 means none (the Node's -1), unlike the
	// Config field, whose zero means the ring's default.
	RingGrace time.Duration
}

// bind defines every setting as a flag whose default comes from its GW_*
// variable, then the documented default.
func (f *flags) bind(b *config.Binder) {
	b.String(&f.MQTTAddr, "mqtt-addr", config.DefaultMQTTAddr, "MQTT listen address (port 0: any free port)")
	b.String(&f.WSAddr, "mqtt-ws-addr", "", "MQTT over WebSocket listen address (paths /mqtt and /; empty: off)")
	b.String(&f.NodeID, "node-id", "", "name in the ring (default: the bound address)")
	b.String(&f.AdvertiseURL, "advertise-url", "", "URL given to clients (default: mqtt://<bound address>)")
	f.Common.Bind(b)
	f.Scale.Bind(b)
	f.Logging.Bind(b)
	b.String(&f.AuthSecret, "auth-secret", "", "HS256 key of the tokens (required)")
	b.String(&f.MetricsAddr, "metrics-addr", config.DefaultMetricsAddr, "Prometheus listen address")
	b.String(&f.TLSCert, "tls-cert", "", "PEM certificate: serve MQTT over TLS (with tls-key)")
	b.String(&f.TLSKey, "tls-key", "", "PEM private key of tls-cert")
	b.Duration(&f.ConfirmTimeout, "confirm-timeout", config.DefaultConfirmTimeout, "longest wait for a publisher confirm of a device response")
	b.Int(&f.Inflight, "inflight", DefaultInflight, "unacknowledged PUBLISHes per session")
	b.Bytes(&f.MaxPacketSize, "max-packet-size", DefaultMaxPacketSize, "largest MQTT packet accepted")
	b.Int(&f.MaxClients, "max-clients", 0, "most connected clients (0: the file limit minus a headroom)")
	b.Int(&f.MaxSubscriptions, "max-subscriptions", DefaultMaxSubscriptions, "most subscriptions per session (beyond: SUBACK 0x97 quota exceeded)")
	b.Int(&f.ShedRate, "shed-rate", DefaultShedRate, "sessions closed per second after a ring change")
	b.Duration(&f.RingGrace, "ring-grace", DefaultRingGrace, "how long the previous ring is honoured before sessions are shed (0: not at all)")
	b.Duration(&f.MaxKeepAlive, "max-keepalive", DefaultMaxKeepAlive, "longest MQTT 5 keep alive: longer ones (or none) get this as Server Keep Alive")
}

// check refuses what the push server cannot run with, and values that the
// Node would silently replace by a default.
func (f *flags) check() error {
	if f.AuthSecret == "" {
		return ErrNoSecret
	}
	if err := auth.CheckSecret(f.AuthSecret); err != nil {
		return fmt.Errorf("pushserver: %w", err)
	}
	switch {
	case f.MQTTAddr == "":
		return errors.New("mqtt-addr must not be empty")
	case (f.TLSCert == "") != (f.TLSKey == ""):
		return errors.New("tls-cert and tls-key must be set together")
	case f.ConfirmTimeout <= 0:
		return errors.New("confirm-timeout must be positive")
	case f.Inflight <= 0 || f.Inflight > 65535:
		return errors.New("inflight must be 1 to 65535")
	case f.MaxPacketSize <= 0:
		return errors.New("max-packet-size must be positive")
	case f.MaxClients < 0:
		return errors.New("max-clients must not be negative (0: the file limit minus a headroom)")
	case f.MaxSubscriptions <= 0:
		return errors.New("max-subscriptions must be positive")
	case f.ShedRate <= 0:
		return errors.New("shed-rate must be positive")
	case f.RingGrace < 0:
		return errors.New("ring-grace must not be negative (0: none)")
	case f.MaxKeepAlive <= 0:
		return errors.New("max-keepalive must be positive")
	}
	// Before the Node's defaults: --queues 0 is an error, not 4.
	if err := f.Scale.Check(); err != nil {
		return fmt.Errorf("pushserver: %w", err)
	}
	return f.Logging.Check()
}
