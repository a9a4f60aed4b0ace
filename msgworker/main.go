package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/telemetry"
)

// gcPercent is the GC target the worker runs with unless GOGC is set.
// Its live heap is about a megabyte (the deliveries in flight), so with
// Go's default of 100 the heap goal is the 4 MB minimum and under load the
// worker collects many times a second: the worker benchmark measured 110
// collections and 300 ms of GC CPU for 40,000 messages, about 7 µs per
// message. At 400 the goal is 16 MB: 16 collections, 33 ms.
const gcPercent = 400

func main() {
	telemetry.DefaultGCPercent(gcPercent)
	ctx, cancel := telemetry.SignalContext(context.Background())
	defer cancel()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "msgworker:", err)
		os.Exit(1)
	}
}

// run is the whole program: it reads the configuration from args and
// getenv, logs to stdout, serves metrics, and runs a Worker until ctx is
// cancelled.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var f flags
	b := config.NewBinder("msgworker", getenv)
	b.FS.SetOutput(stdout)
	f.bind(b)
	if err := b.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := f.check(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	log := f.NewLogger(stdout).With("service", "msgworker")
	stopTracing, err := telemetry.StartTracing(ctx, "msgworker", getenv, stdout, log)
	if err != nil {
		return err
	}
	defer telemetry.Flush(stopTracing, log)
	// go-redis logs every failed dial to stderr; during an outage that is
	// a flood. The worker reports outages itself; keep go-redis at debug.
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})
	reg := telemetry.NewRegistry()
	f.Logger = log
	f.Registerer = reg
	w, err := New(f.Config)
	if err != nil {
		return err
	}
	ms, err := telemetry.ServeMetrics(f.MetricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = ms.Shutdown(sctx)
	}()
	ms.SetReady(w.Ready)
	log.Info("msgworker starting", "namespace", f.Namespace, "metrics_addr", ms.Addr(), "pid", os.Getpid())
	return w.Run(ctx)
}

// redisLogger sends go-redis's internal log lines to slog at debug level.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...))
}
