package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/iotgw/gateway/internal/auth"
	"io"
	"os"
	"time"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/telemetry"
)

// defaultGCPercent is the binary's GOGC unless the GOGC variable is set
// (see "Memory" in the package documentation for what it trades).
const defaultGCPercent = 100

func main() {
	telemetry.DefaultGCPercent(defaultGCPercent)
	ctx, cancel := telemetry.SignalContext(context.Background())
	defer cancel()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pushserver:", err)
		os.Exit(1)
	}
}

// shutdownTimeout bounds the orderly shutdown after a signal.
const shutdownTimeout = 30 * time.Second

// run parses the configuration from args and getenv (flags win over GW_*
// variables), logs to stdout, runs a Node until ctx is done, then shuts it
// down.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var (
		cfg           Config
		logging       config.Logging
		maxPacketSize int64
		ringGrace     time.Duration
	)
	b := config.NewBinder("pushserver", getenv)
	b.FS.SetOutput(stdout)
	b.String(&cfg.MQTTAddr, "mqtt-addr", config.DefaultMQTTAddr, "MQTT listen address (port 0: any free port)")
	b.String(&cfg.WSAddr, "mqtt-ws-addr", "", "MQTT over WebSocket listen address (paths /mqtt and /; empty: off)")
	b.String(&cfg.NodeID, "node-id", "", "name in the ring (default: the bound address)")
	b.String(&cfg.AdvertiseURL, "advertise-url", "", "URL given to clients (default: mqtt://<bound address>)")
	cfg.Common.Bind(b)
	cfg.Scale.Bind(b)
	logging.Bind(b)
	b.String(&cfg.AuthSecret, "auth-secret", "", "HS256 key of the tokens (required)")
	b.String(&cfg.MetricsAddr, "metrics-addr", config.DefaultMetricsAddr, "Prometheus listen address")
	b.String(&cfg.TLSCert, "tls-cert", "", "PEM certificate: serve MQTT over TLS (with tls-key)")
	b.String(&cfg.TLSKey, "tls-key", "", "PEM private key of tls-cert")
	b.Duration(&cfg.ConfirmTimeout, "confirm-timeout", config.DefaultConfirmTimeout, "longest wait for a publisher confirm of a device response")
	b.Int(&cfg.Inflight, "inflight", DefaultInflight, "unacknowledged PUBLISHes per session")
	b.Bytes(&maxPacketSize, "max-packet-size", DefaultMaxPacketSize, "largest MQTT packet accepted")
	b.Int(&cfg.MaxClients, "max-clients", 0, "most connected clients (0: the file limit minus a headroom)")
	b.Int(&cfg.MaxSubscriptions, "max-subscriptions", DefaultMaxSubscriptions, "most subscriptions per session (beyond: SUBACK 0x97 quota exceeded)")
	b.Int(&cfg.ShedRate, "shed-rate", DefaultShedRate, "sessions closed per second after a ring change")
	b.Duration(&ringGrace, "ring-grace", 5*time.Second, "how long the previous ring is honoured before sessions are shed")
	b.Duration(&cfg.MaxKeepAlive, "max-keepalive", DefaultMaxKeepAlive, "longest MQTT 5 keep alive: longer ones (or none) get this as Server Keep Alive")
	if err := b.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.AuthSecret == "" {
		return ErrNoSecret
	}
	if err := auth.CheckSecret(cfg.AuthSecret); err != nil {
		return fmt.Errorf("pushserver: %w", err)
	}
	// Before the defaults: --queues 0 is an error, not the default.
	if err := cfg.Scale.Check(); err != nil {
		return fmt.Errorf("pushserver: %w", err)
	}
	cfg.MaxPacketSize = maxPacketSize
	cfg.RingGrace = ringGrace
	if ringGrace == 0 {
		cfg.RingGrace = -1 // no grace
	}
	cfg.Logger = logging.NewLogger(stdout)
	stopTracing, err := telemetry.StartTracing(ctx, "pushserver", getenv, stdout, cfg.Logger)
	if err != nil {
		return err
	}
	defer telemetry.Flush(stopTracing, cfg.Logger)
	cfg.Registry = telemetry.NewRegistry()

	node, err := NewNode(cfg)
	if err != nil {
		return err
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return node.Shutdown(sctx)
}
