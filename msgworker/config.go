package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/mailbox"
)

// Defaults of the worker's own settings. The shared ones (URLs, namespace,
// retention, mailbox cap, metrics address) come from package config.
const (
	// DefaultPrefetch bounds a worker's unacked deliveries of the command
	// queues together (see Config.Prefetch).
	DefaultPrefetch = 128
	// DefaultConcurrency is the number of handlers a worker runs at once
	// for the command queues together.
	DefaultConcurrency = 64
	// DefaultTimerInterval is how often every worker polls the timer set.
	DefaultTimerInterval = 200 * time.Millisecond
	// DefaultTimerBatch is the most timers one FireTimers call fires.
	DefaultTimerBatch = 256
	// DefaultTimerSweep is how often a worker polls every partition it
	// owns (Config.TimerSweep), and the longest it may wait: steps do not
	// report work due later than mailbox.ReportHorizon.
	DefaultTimerSweep = mailbox.ReportHorizon
	// DefaultShutdownTimeout bounds the wait for in-flight handlers at
	// shutdown.
	DefaultShutdownTimeout = 10 * time.Second
	// deadPrefetch and deadConcurrency size the dead-letter consumers:
	// dead letters are rare, and slow handling of them harms nobody.
	deadPrefetch    = 16
	deadConcurrency = 4
)

// Config is the configuration of a Worker. Every field states its default;
// the zero value of a field means its default. In the binary each field is
// a flag and a GW_* variable of the same name (see bind).
type Config struct {
	// Common holds AMQPURL (amqp-url, GW_AMQP_URL), RedisURL (redis-url,
	// GW_REDIS_URL) and Namespace (namespace, GW_NAMESPACE); defaults
	// amqp://guest:guest@127.0.0.1:5672/, redis://127.0.0.1:6379/0 and
	// "gw".
	config.Common
	// Scale holds the fixed counts, Partitions (partitions,
	// GW_PARTITIONS) and Queues (queues, GW_QUEUES), and the durability
	// settings; defaults in package config. The worker consumes each of
	// the Queues command queues. Both counts must be those of the
	// namespace: the fence refuses other ones, and Run returns that error.
	config.Scale
	// Retention is how long final records and results are kept
	// (retention, GW_RETENTION). Default 24h.
	Retention time.Duration
	// MailboxCap is the number of entries a mailbox holds at most; a
	// command for a device whose mailbox is full is rejected (mailbox-cap,
	// GW_MAILBOX_CAP). Default 10000.
	MailboxCap int
	// Prefetch bounds the unacked deliveries of the command queues
	// together (prefetch, GW_PREFETCH).
	// Default 128. The command queues share it: each of their consumers
	// has a prefetch of Prefetch/Queues, rounded up (so the total may be
	// a little more), so a worker holds about as many commands whatever
	// GW_QUEUES, and KEDA's count of ready messages (which leaves out the
	// ones workers hold) means the same.
	Prefetch int
	// Concurrency is how many handlers run at once for the command queues
	// together (concurrency, GW_CONCURRENCY).
	// Default 64, and never above Prefetch. The command queues share it
	// as they share Prefetch: each consumer runs Concurrency/Queues
	// handlers, rounded up. The worker's Redis connections and goroutines
	// do not grow with GW_QUEUES; a queue whose devices are busier than
	// the others' gets its share, not more.
	Concurrency int
	// TimerInterval is how often the worker polls the timer set
	// (timer-interval, GW_TIMER_INTERVAL). Default 200ms.
	TimerInterval time.Duration
	// TimerBatch is the most timers fired by one poll; a full batch is
	// followed by another poll at once. Default 256.
	TimerBatch int
	// TimerSweep is how often the worker polls every partition it owns:
	// it finds the work that steps do not report (due later than
	// mailbox.ReportHorizon) before it is due, and is the backstop of the
	// reports (due.go): a report lost (its process died right after the
	// step) delays that work by at most this much. Default and most
	// mailbox.ReportHorizon (30s); a longer one is lowered to it.
	TimerSweep time.Duration
	// ShutdownTimeout bounds how long Run waits for in-flight handlers
	// once its context is cancelled. Default 10s.
	ShutdownTimeout time.Duration

	// Logger receives the worker's logs. Default discards.
	Logger *slog.Logger
	// Registerer receives the worker's metrics. Default: a private
	// registry nobody reads (two Workers in one process each need their
	// own registry).
	Registerer prometheus.Registerer

	// middleware is prepended to every queue's handler chain, after the
	// standard middleware; tests use it to inject faults.
	middleware []Middleware
}

func (c *Config) ensureDefaults() {
	c.Common.SetDefaults()
	c.Scale.SetDefaults()
	if c.Retention <= 0 {
		c.Retention = config.DefaultRetention
	}
	if c.MailboxCap <= 0 {
		c.MailboxCap = config.DefaultMailboxCap
	}
	if c.Prefetch <= 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Concurrency > c.Prefetch {
		c.Concurrency = c.Prefetch
	}
	if c.TimerInterval <= 0 {
		c.TimerInterval = DefaultTimerInterval
	}
	if c.TimerBatch <= 0 {
		c.TimerBatch = DefaultTimerBatch
	}
	if c.TimerSweep <= 0 || c.TimerSweep > DefaultTimerSweep {
		c.TimerSweep = DefaultTimerSweep
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

// namespaceRE is what a namespace may look like: it must be valid both as
// an AMQP name prefix and as a Redis key prefix.
var namespaceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// validate reports the first setting that cannot work. It runs after
// ensureDefaults, so only explicitly bad values fail.
func (c *Config) validate() error {
	if !namespaceRE.MatchString(c.Namespace) {
		return fmt.Errorf("namespace %q must be 1 to 64 of A-Z a-z 0-9 _ - starting with a letter or digit", c.Namespace)
	}
	if c.Prefetch > 65535 {
		return errors.New("prefetch must be at most 65535")
	}
	return c.Scale.Check()
}

// commandShare is the prefetch and the concurrency of the consumer of one
// command queue: Prefetch and Concurrency split over the Queues queues,
// rounded up, at least 1 (see Config.Prefetch). It runs after
// ensureDefaults.
func (c *Config) commandShare() (prefetch, concurrency int) {
	n := max(c.Queues, 1)
	prefetch = max((c.Prefetch+n-1)/n, 1)
	concurrency = min(max((c.Concurrency+n-1)/n, 1), prefetch)
	return prefetch, concurrency
}

// flags is the binary's configuration: the Worker's Config plus what only
// the process needs.
type flags struct {
	Config
	config.Logging
	MetricsAddr string
}

// bind defines every setting as a flag whose default comes from its GW_*
// variable, then the documented default.
func (f *flags) bind(b *config.Binder) {
	f.Common.Bind(b)
	f.Logging.Bind(b)
	f.Scale.Bind(b)
	b.Duration(&f.Retention, "retention", config.DefaultRetention, "how long final records and results are kept")
	b.Int(&f.MailboxCap, "mailbox-cap", config.DefaultMailboxCap, "entries per mailbox; a command to a full device mailbox is rejected")
	b.Int(&f.Prefetch, "prefetch", DefaultPrefetch, "unacked deliveries of the command queues together")
	b.Int(&f.Concurrency, "concurrency", DefaultConcurrency, "handlers running at once for the command queues together (at most prefetch)")
	b.Duration(&f.TimerInterval, "timer-interval", DefaultTimerInterval, "how often the timer set is polled")
	b.String(&f.MetricsAddr, "metrics-addr", config.DefaultMetricsAddr, "Prometheus listen address (port 0: any free port, logged at start)")
}

// check refuses values that the Worker would silently replace by a default.
func (f *flags) check() error {
	switch {
	case f.Retention <= 0:
		return errors.New("retention must be positive")
	case f.MailboxCap <= 0:
		return errors.New("mailbox-cap must be positive")
	case f.Prefetch <= 0:
		return errors.New("prefetch must be positive")
	case f.Concurrency <= 0:
		return errors.New("concurrency must be positive")
	case f.TimerInterval <= 0:
		return errors.New("timer-interval must be positive")
	}
	// Before the Worker's defaults: --queues 0 is an error, not 4.
	if err := f.Scale.Check(); err != nil {
		return err
	}
	return f.Logging.Check()
}
