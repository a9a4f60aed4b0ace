package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
	var f flags
	b := config.NewBinder("pushserver", getenv)
	b.FS.SetOutput(stdout)
	f.bind(b)
	if err := b.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := f.check(); err != nil {
		if errors.Is(err, ErrNoSecret) {
			return err
		}
		return fmt.Errorf("invalid configuration: %w", err)
	}
	cfg := f.Config
	cfg.RingGrace = f.RingGrace
	if f.RingGrace == 0 {
		cfg.RingGrace = -1 // no grace
	}
	cfg.Logger = f.NewLogger(stdout).With("service", "pushserver")
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
