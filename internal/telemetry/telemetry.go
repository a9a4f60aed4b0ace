// Package telemetry holds what every service does the same way: its
// logger, its Prometheus registry and metrics listener, and the signals
// that stop it.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/iotgw/gateway/internal/buildinfo"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewLogger returns a JSON or text slog logger writing to w at the level
// named by level ("debug", "info", "warn", "error"; default info). A
// warning or error repeated with the same message is written at most once
// per RepeatEvery (LimitRepeats). A line logged with a context that
// carries a trace gets its trace_id (LogTraceID).
func NewLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(LimitRepeats(LogTraceID(h), RepeatEvery))
}

// Discard is a logger that writes nothing, for tests.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// NewRegistry returns a Prometheus registry with gw_build_info (the
// running build, internal/buildinfo), the Go runtime and
// process collectors, and the process's Redis calls (RedisCallsHook),
// for one service.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Collector())
	reg.MustRegister(redisCallsCollectors()...)
	return reg
}

// MetricsServer serves /metrics of a registry on its own listener.
type MetricsServer struct {
	srv   *http.Server
	ln    net.Listener
	ready atomic.Pointer[func(context.Context) error]
}

// ServeMetrics listens on addr synchronously (so a bad address fails at
// once) and serves reg's metrics at /metrics in the background, with the
// Go runtime's profiles at /debug/pprof/ (the listener is for operators:
// it defaults to loopback, GW_METRICS_ADDR), /healthz (alive) and /readyz
// (the check given to SetReady). Addr returns the bound
// address (useful with port 0).
func ServeMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (*MetricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	m := &MetricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	mux.HandleFunc("/readyz", m.readyz)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return m, nil
}

// SetReady sets the check that /readyz runs: 200 "ready" when it returns
// nil, else 503 with its error. Until SetReady is called /readyz answers
// 503 "starting".
func (m *MetricsServer) SetReady(check func(context.Context) error) { m.ready.Store(&check) }

func (m *MetricsServer) readyz(w http.ResponseWriter, r *http.Request) {
	check := m.ready.Load()
	if check == nil {
		http.Error(w, "not ready: starting", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := (*check)(ctx); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

// Addr is the address the metrics server listens on.
func (m *MetricsServer) Addr() string { return m.ln.Addr().String() }

// Shutdown stops the metrics server by ctx's deadline.
func (m *MetricsServer) Shutdown(ctx context.Context) error { return m.srv.Shutdown(ctx) }

// SignalContext returns a context cancelled by SIGINT or SIGTERM. A second
// signal exits the process at once with status 1.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
			signal.Stop(ch)
			return
		}
		<-ch
		os.Exit(1)
	}()
	return ctx, cancel
}

// DefaultGCPercent sets the garbage collector's target to percent unless
// the GOGC variable is set, which then wins: a service's own default,
// still tunable by the operator.
func DefaultGCPercent(percent int) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(percent)
	}
}

// MaxLoggedLen bounds a logged value that an outsider controls (a path, a
// username, a client ID): Clip keeps this many bytes of it.
const MaxLoggedLen = 160

// Clip returns s for a log line: unchanged when short, else its first
// MaxLoggedLen bytes (cut at a rune boundary) and how many bytes were
// left out, so that one request cannot write megabytes of log.
func Clip(s string) string {
	if len(s) <= MaxLoggedLen {
		return s
	}
	cut := MaxLoggedLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)-cut) + " more bytes)"
}
