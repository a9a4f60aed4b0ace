package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/protocol"
)

// Bounds of the per-command query parameters (DESIGN §3).
const (
	DefaultTimeout   = 30 * time.Second
	MinTimeout       = time.Second
	MaxTimeout       = 24 * time.Hour
	DefaultExpiresIn = time.Hour
	MinExpiresIn     = time.Second
	MaxExpiresIn     = 7 * 24 * time.Hour
	// MaxNotBefore bounds not_before: at most 30 days ahead.
	MaxNotBefore = 30 * 24 * time.Hour
	// MaxRetries bounds retries.
	MaxRetries = 10
)

// Defaults of the settings that are not in DESIGN §9.
const (
	// DefaultMaxWait caps ?wait= of the long-poll.
	DefaultMaxWait = 60 * time.Second
	// DefaultShutdownTimeout is how long in-flight requests get to finish
	// once the server stops accepting.
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultReadTimeout, DefaultWriteTimeout and DefaultIdleTimeout are the
	// http.Server timeouts. A long-poll extends its own write deadline.
	DefaultReadTimeout  = 30 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	DefaultIdleTimeout  = 120 * time.Second
	// DefaultMaxInFlight bounds the API requests in flight (GW_MAX_INFLIGHT).
	// Requests beyond it are answered 503 at once rather than queued: on
	// the 2-core test machine, which accepts 3,000 to 4,000 commands/s, 512
	// requests in flight are 130 to 170 ms of work, while a request needs
	// a few milliseconds when it does not queue; the bound limits
	// throughput only once a request takes longer than 512 / throughput.
	DefaultMaxInFlight = 512
)

// Config is the apiserver's configuration. Flags and GW_* environment
// variables of the same names fill it (see bind); a zero field of a
// Config built in code takes the documented default in NewServer.
type Config struct {
	// Common holds AMQPURL, RedisURL and Namespace (defaults as in
	// DESIGN §9).
	config.Common
	// Logging holds LogLevel (debug, info, warn, error; default info) and
	// LogFormat (json or text; default json) of the service's logger.
	config.Logging
	// Scale holds the fixed counts, Partitions (GW_PARTITIONS) and Queues
	// (GW_QUEUES), and the durability settings; defaults in package
	// config. A command to device d is published to command queue
	// protocol.Partition(d, Partitions) mod Queues. Both counts must be
	// those of the namespace: the fence refuses other ones at start.
	config.Scale
	// AMQPMgmtURL is RabbitMQ's management API, for the rates and ages of
	// GET /v1/stats. Default config.DefaultAMQPMgmtURL.
	AMQPMgmtURL string
	// AuthSecret is the HS256 key of the tokens. Required: there is no
	// default, and the server refuses to start without it.
	AuthSecret string
	// HTTPAddr is the listen address. Default 127.0.0.1:8080; with port 0
	// the bound address is logged ("listening", addr=…).
	HTTPAddr string
	// TLSCert and TLSKey are PEM files; when both are set the server
	// speaks HTTPS. Default: plain HTTP.
	TLSCert, TLSKey string
	// Retention is how long final records are kept. Default 24h.
	Retention time.Duration
	// Rate and Burst are each client's token bucket: Rate requests per
	// second on average, Burst at once. Defaults 1000 and 2000; a Rate
	// below zero disables the limit.
	Rate  float64
	Burst int
	// BodyLimit is the largest request body in bytes. Default 64 KiB.
	BodyLimit int64
	// ConfirmTimeout is the longest wait for a publisher confirm; the
	// reservation lease of a pending command is twice this. Default 5s.
	ConfirmTimeout time.Duration
	// MaxInFlight bounds the requests of the client API (/v1/devices,
	// /v1/commands, /v1/connect; not the operators' /v1/stats and /v1/dead)
	// being handled at once (a batch counts as one request; a long-poll
	// counts only until it starts waiting). One more is answered 503
	// (-32016, "server overloaded") with Retry-After before its token is
	// checked. Default DefaultMaxInFlight; negative: no bound. The Redis
	// pool of run is sized to it.
	MaxInFlight int
	// CORSOrigins (GW_CORS_ORIGINS, comma-separated) are the origins whose
	// pages may call the API from a browser: each is scheme://host[:port]
	// as a browser sends it in Origin, or * for any. They get preflights
	// answered and the Access-Control-Allow-* headers (see cors.go).
	// Default none: no CORS headers at all, browsers allow same-origin
	// calls only.
	CORSOrigins []string

	// MaxWait caps the long-poll's ?wait=. Default 60s. Not a flag.
	MaxWait time.Duration
	// ShutdownTimeout bounds the graceful shutdown. Default 10s. Not a flag.
	ShutdownTimeout time.Duration
	// ReadTimeout, WriteTimeout and IdleTimeout of the http.Server.
	// Defaults 30s, 30s, 120s. Not flags.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// ErrNoSecret is returned when GW_AUTH_SECRET is not set.
var ErrNoSecret = errors.New("apiserver: GW_AUTH_SECRET (or --auth-secret) is required: it is the HS256 key of the tokens")

// ensureDefaults fills the zero fields with their defaults.
func (c *Config) ensureDefaults() {
	c.Common.SetDefaults()
	c.Scale.SetDefaults()
	if c.AMQPMgmtURL == "" {
		c.AMQPMgmtURL = config.DefaultAMQPMgmtURL
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = config.DefaultHTTPAddr
	}
	if c.Retention <= 0 {
		c.Retention = config.DefaultRetention
	}
	if c.Rate == 0 {
		c.Rate = config.DefaultRate
	}
	if c.Burst <= 0 {
		c.Burst = config.DefaultBurst
	}
	if c.BodyLimit <= 0 {
		c.BodyLimit = config.DefaultBodyLimit
	}
	if c.ConfirmTimeout <= 0 {
		c.ConfirmTimeout = config.DefaultConfirmTimeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxWait <= 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
}

// validate reports a configuration the server cannot run with.
func (c *Config) validate() error {
	if strings.TrimSpace(c.AuthSecret) == "" {
		return ErrNoSecret
	}
	if err := auth.CheckSecret(c.AuthSecret); err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("apiserver: GW_TLS_CERT and GW_TLS_KEY must be set together")
	}
	if c.BodyLimit < 2 {
		return fmt.Errorf("apiserver: body limit %d is too small", c.BodyLimit)
	}
	if err := c.Scale.Check(); err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	for _, o := range c.CORSOrigins {
		if err := checkOrigin(o); err != nil {
			return fmt.Errorf("apiserver: GW_CORS_ORIGINS: %w", err)
		}
	}
	return nil
}

// topology is the namespace's AMQP topology with the configured counts
// (during a resize, GW_QUEUES_FROM set: the old and the new queues).
func (c *Config) topology() protocol.Topology {
	return c.Scale.Topology(c.Namespace)
}

// flags is the binary's configuration: the Config plus what only the
// flag parsing needs. Each setting is a flag and a GW_* variable of the
// same name (see bind).
type flags struct {
	Config
	// corsOrigins is cors-origins as given, split into Config.CORSOrigins.
	corsOrigins string
}

// bind defines every setting as a flag whose default comes from its GW_*
// variable, then the documented default.
func (f *flags) bind(b *config.Binder) {
	f.Common.Bind(b)
	f.Logging.Bind(b)
	f.Scale.Bind(b)
	b.String(&f.AMQPMgmtURL, "amqp-mgmt-url", config.DefaultAMQPMgmtURL, "RabbitMQ management API URL (rates and ages of /v1/stats)")
	b.String(&f.AuthSecret, "auth-secret", "", "HS256 key of the tokens (required)")
	b.String(&f.HTTPAddr, "http-addr", config.DefaultHTTPAddr, "HTTP listen address")
	b.String(&f.TLSCert, "tls-cert", "", "TLS certificate (PEM); serve HTTPS when set with --tls-key")
	b.String(&f.TLSKey, "tls-key", "", "TLS private key (PEM)")
	b.Duration(&f.Retention, "retention", config.DefaultRetention, "how long final records are kept")
	b.Float(&f.Rate, "rate", config.DefaultRate, "per-client requests per second (negative: no limit)")
	b.Int(&f.Burst, "burst", config.DefaultBurst, "per-client burst")
	b.Bytes(&f.BodyLimit, "body-limit", config.DefaultBodyLimit, "largest request body")
	b.Duration(&f.ConfirmTimeout, "confirm-timeout", config.DefaultConfirmTimeout, "longest wait for a publisher confirm")
	b.Int(&f.MaxInFlight, "max-inflight", DefaultMaxInFlight, "API requests in flight before more are answered 503 (server overloaded); negative: no bound")
	b.String(&f.corsOrigins, "cors-origins", "", "comma-separated origins (scheme://host[:port], or *) whose pages may call the API from a browser (default: none)")
}

// check refuses values that NewServer would silently replace by a default
// and a bad log level or format. It runs before the defaults (validate
// checks the rest once they are filled).
func (f *flags) check() error {
	switch {
	case f.HTTPAddr == "":
		return errors.New("http-addr must not be empty")
	case f.Retention <= 0:
		return errors.New("retention must be positive")
	case f.Rate == 0:
		return errors.New("rate must be positive, or negative for no limit")
	case f.Burst <= 0:
		return errors.New("burst must be positive")
	case f.BodyLimit <= 0:
		return errors.New("body-limit must be positive")
	case f.ConfirmTimeout <= 0:
		return errors.New("confirm-timeout must be positive")
	case f.MaxInFlight == 0:
		return errors.New("max-inflight must be positive, or negative for no bound")
	}
	// Before the defaults: --queues 0 is an error, not the default.
	if err := f.Scale.Check(); err != nil {
		return err
	}
	return f.Logging.Check()
}

// parseConfig fills a Config from args and getenv (flags win over GW_*
// variables, which win over the defaults) and checks it (flags.check).
func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var f flags
	b := config.NewBinder("apiserver", getenv)
	b.FS.SetOutput(out)
	f.bind(b)
	if err := b.Parse(args); err != nil {
		return Config{}, err
	}
	if b.FS.NArg() > 0 {
		return Config{}, fmt.Errorf("invalid flags: unexpected arguments %q", b.FS.Args())
	}
	if err := f.check(); err != nil {
		return Config{}, fmt.Errorf("apiserver: invalid configuration: %w", err)
	}
	f.CORSOrigins = splitList(f.corsOrigins)
	f.ensureDefaults()
	return f.Config, nil
}
