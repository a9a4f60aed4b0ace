package main

import (
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
