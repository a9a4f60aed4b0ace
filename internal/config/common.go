package config

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/iotgw/gateway/internal/telemetry"
)

// Defaults of the logging settings (DESIGN §9).
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "json"
)

// Common is where every service finds the shared state: RabbitMQ, Redis
// and the namespace of both. A service embeds it in its Config and binds
// it with Bind; a zero field takes its default in SetDefaults.
type Common struct {
	// AMQPURL is the RabbitMQ URL (amqp-url, GW_AMQP_URL). Default
	// DefaultAMQPURL.
	AMQPURL string
	// RedisURL is the Redis URL (redis-url, GW_REDIS_URL), in one of three
	// forms: one server (RedisSingleForm), Redis Cluster (RedisClusterForm,
	// several addr=) or Sentinel (RedisSentinelForm, master_name=); see
	// NewRedis. Default DefaultRedisURL.
	RedisURL string
	// Namespace prefixes every exchange, queue and key (namespace,
	// GW_NAMESPACE). Default DefaultNamespace ("gw").
	Namespace string
}

// Bind defines the flags amqp-url, redis-url and namespace, with their
// GW_* variables and documented defaults.
func (c *Common) Bind(b *Binder) {
	b.String(&c.AMQPURL, "amqp-url", DefaultAMQPURL, "RabbitMQ URL")
	b.String(&c.RedisURL, "redis-url", DefaultRedisURL, "Redis URL")
	b.String(&c.Namespace, "namespace", DefaultNamespace, "prefix of every exchange, queue and key")
}

// SetDefaults fills the zero fields with their defaults.
func (c *Common) SetDefaults() {
	if c.AMQPURL == "" {
		c.AMQPURL = DefaultAMQPURL
	}
	if c.RedisURL == "" {
		c.RedisURL = DefaultRedisURL
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
}

// Logging is a service's logger settings.
type Logging struct {
	// LogLevel is debug, info, warn or error (log-level, GW_LOG_LEVEL).
	// Default info.
	LogLevel string
	// LogFormat is json or text (log-format, GW_LOG_FORMAT). Default json.
	LogFormat string
}

// Bind defines the flags log-level and log-format, with their GW_*
// variables and documented defaults.
func (l *Logging) Bind(b *Binder) {
	b.String(&l.LogLevel, "log-level", DefaultLogLevel, "debug, info, warn or error")
	b.String(&l.LogFormat, "log-format", DefaultLogFormat, "json or text")
}

// Check refuses a format other than json or text and an unknown level.
// (NewLogger itself takes any value: an unknown level means info, an
// unknown format json.)
func (l *Logging) Check() error {
	if l.LogFormat != "json" && l.LogFormat != "text" {
		return fmt.Errorf("log-format %q must be json or text", l.LogFormat)
	}
	switch l.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log-level %q must be debug, info, warn or error", l.LogLevel)
	}
	return nil
}

// NewLogger returns the logger the settings describe, writing to w
// (telemetry.NewLogger).
func (l *Logging) NewLogger(w io.Writer) *slog.Logger {
	return telemetry.NewLogger(w, l.LogFormat, l.LogLevel)
}
