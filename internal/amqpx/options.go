package amqpx

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// DefaultURL is the RabbitMQ URL used when Options.URL is empty.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Options configures a connection of a [Publisher] or a [Consumer]. The
// zero value is usable: every field states its default.
type Options struct {
	// URL is the RabbitMQ URL. Default DefaultURL.
	URL string
	// ConfirmTimeout is the longest wait for a publisher confirm, and the
	// longest a write to the socket may block before the connection is
	// considered dead. Default 5s.
	ConfirmTimeout time.Duration
	// Name is the connection name shown in RabbitMQ (the connection_name
	// client property, "user_provided_name" in the management API).
	// Default empty (no name).
	Name string
	// Logger receives connection events. Default discards.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the delay between reconnect attempts
	// (doubling, with jitter). Defaults 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// Channels is the number of confirm-mode channels a Publisher publishes
	// on (each publish takes one of them for the write only). Default 4.
	Channels int
}

func (o *Options) ensureDefaults() {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.ConfirmTimeout <= 0 {
		o.ConfirmTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.Channels <= 0 {
		o.Channels = 4
	}
}

// backoff returns the delay before attempt n (0-based): MinBackoff doubled
// n times, capped at MaxBackoff, with up to 20% jitter removed.
func backoff(minB, maxB time.Duration, n int) time.Duration {
	d := minB
	for i := 0; i < n && d < maxB; i++ {
		d *= 2
	}
	if d > maxB {
		d = maxB
	}
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}
