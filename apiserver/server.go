package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Publisher publishes a message with a publisher confirm: nil only when
// the broker confirmed it and a queue took it (*amqpx.Publisher).
type Publisher interface {
	Publish(ctx context.Context, exchange, key string, body []byte, h amqpx.Headers) error
	// Ready reports whether a publish now would be attempted.
	Ready() bool
}

// Ring answers which push server owns an identity (*ring.Ring).
type Ring interface {
	Owner(identity string) (ring.Member, bool)
	Members() []ring.Member
}

// Deps are what a Server works with. The Server does not own them: the
// caller closes them after Serve has returned.
type Deps struct {
	// Redis answers /readyz's PING. Required.
	Redis redis.UniversalClient
	// Store holds the command records. Required.
	Store *mailbox.Store
	// Publisher publishes the commands. Required.
	Publisher Publisher
	// Ring names the push servers. Required.
	Ring Ring
	// Registry receives the API's metrics and is served at /metrics.
	// Default: a new telemetry.NewRegistry().
	Registry *prometheus.Registry
	// Logger receives the request log. Default: discard.
	Logger *slog.Logger
}

// Server is the HTTP API of DESIGN §3. Build it with NewServer; serve it
// with Serve, or mount Handler in an httptest.Server.
type Server struct {
	cfg   Config
	store *mailbox.Store
	pub   Publisher
	ring  Ring
	rdb   redis.UniversalClient
	topo  protocol.Topology
	// pubTopo is where commands are published (queues.go): topo, or
	// during a resize the old or, once switched, the new count.
	pubTopo  atomic.Pointer[protocol.Topology]
	verifier *auth.Verifier
	limiter  *limiter
	metrics  *metrics
	registry *prometheus.Registry
	log      *slog.Logger
	echo     *echo.Echo

	stopOnce sync.Once
	stopping chan struct{} // closed when shutdown begins: long-polls return

	inFlight atomic.Int64 // requests holding a place (admit)
	shares   *counts      // places in flight held per client (share.go)
	polls    *counts      // long-polls waiting, per client (share.go)
}

// NewServer returns a Server for cfg (zero fields take their defaults) and
// deps. It fails without cfg.AuthSecret and without a required dependency.
func NewServer(cfg Config, deps Deps) (*Server, error) {
	cfg.ensureDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	switch {
	case deps.Redis == nil:
		return nil, errors.New("apiserver: Deps.Redis is required")
	case deps.Store == nil:
		return nil, errors.New("apiserver: Deps.Store is required")
	case deps.Publisher == nil:
		return nil, errors.New("apiserver: Deps.Publisher is required")
	case deps.Ring == nil:
		return nil, errors.New("apiserver: Deps.Ring is required")
	}
	v, err := auth.NewVerifier([]byte(cfg.AuthSecret))
	if err != nil {
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	if deps.Registry == nil {
		deps.Registry = telemetry.NewRegistry()
	}
	if deps.Logger == nil {
		deps.Logger = telemetry.Discard()
	}
	m, err := newMetrics(deps.Registry)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		store:    deps.Store,
		pub:      deps.Publisher,
		ring:     deps.Ring,
		rdb:      deps.Redis,
		topo:     cfg.topology(),
		verifier: v,
		limiter:  newLimiter(cfg.Rate, cfg.Burst),
		shares:   newCounts(),
		polls:    newCounts(),
		metrics:  m,
		registry: deps.Registry,
		log:      deps.Logger,
		stopping: make(chan struct{}),
	}
	s.initRoute()
	if err := deps.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gw_api_requests_in_flight",
		Help: "Client API requests being handled (bounded by GW_MAX_INFLIGHT; long-polls that wait not counted).",
	}, func() float64 { return float64(s.inFlight.Load()) })); err != nil {
		return nil, fmt.Errorf("apiserver: cannot register metrics: %w", err)
	}
	s.routes()
	return s, nil
}

// Handler returns the http.Handler of the API.
func (s *Server) Handler() http.Handler { return s.echo }

// routes builds the echo router. Middleware order matters: the request
// log and metrics wrap everything; the bound on requests in flight comes
// first on /v1, so that an overloaded server refuses cheaply; then
// authentication runs before the rate limit (which is per client) and
// both before any handler reads the body, so a request without a valid
// token gets 401 however large its body.
func (s *Server) routes() {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(io.Discard)
	e.HTTPErrorHandler = s.handleError
	e.Use(s.observe, s.recoverPanic)
	if len(s.cfg.CORSOrigins) > 0 {
		// Before the routes' own middleware: a preflight is answered
		// here, without a token, and counts against nothing.
		e.Use(s.cors())
	}

	clientAPI := []echo.MiddlewareFunc{s.admit, s.authenticate(auth.RoleClient, auth.RoleOperator), s.rateLimit}
	anyRole := []echo.MiddlewareFunc{s.admit, s.authenticate(auth.RoleClient, auth.RoleOperator, auth.RoleDevice), s.rateLimit}

	e.POST("/v1/devices/:device_id/commands", s.postCommands, clientAPI...)
	e.GET("/v1/devices/:device_id/commands", s.listCommands, clientAPI...)
	e.DELETE("/v1/devices/:device_id/commands", s.cancelAll, clientAPI...)
	e.GET("/v1/devices/:device_id", s.getDevice, clientAPI...)
	e.GET("/v1/commands/:id", s.getCommand, clientAPI...)
	e.DELETE("/v1/commands/:id", s.cancelCommand, clientAPI...)
	e.POST("/v1/commands/:id/retry", s.retryCommand, clientAPI...)
	e.GET("/v1/connect/:identity", s.connect, anyRole...)
	// Group commands and device groups (issue 14): groups.go.
	e.POST("/v1/commands", s.postGroupCommand, clientAPI...)
	e.GET("/v1/group-commands/:id", s.getGroupCommand, clientAPI...)
	e.DELETE("/v1/group-commands/:id", s.cancelGroupCommand, clientAPI...)
	operatorAPI := []echo.MiddlewareFunc{s.admit, s.authenticate(auth.RoleOperator), s.rateLimit}
	e.GET("/v1/group-commands", s.listGroupCommands, operatorAPI...)
	e.PUT("/v1/groups/:name", s.putDeviceGroup, operatorAPI...)
	e.GET("/v1/groups/:name", s.getDeviceGroup, operatorAPI...)
	e.DELETE("/v1/groups/:name", s.deleteDeviceGroup, operatorAPI...)
	deviceAPI := []echo.MiddlewareFunc{s.admit, s.authenticate(auth.RoleDevice), s.rateLimit}
	e.GET("/v1/devices/:device_id/commands/next", s.pollCommands, deviceAPI...)
	e.POST("/v1/devices/:device_id/responses", s.postResponses, deviceAPI...)

	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/openapi.yaml", s.openapi)
	metricsHandler := promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry})
	e.GET("/metrics", echo.WrapHandler(metricsHandler))
	s.echo = e
	// Operator endpoints (/v1/stats, /v1/dead, replay), queue and mailbox
	// gauges, and the dashboard at /: ops.go.
	s.registerOps(e)
}

// Serve serves the API on ln (HTTPS when Config.TLSCert and TLSKey are
// set) until ctx is done, then shuts down gracefully: it stops accepting,
// tells long-polls to answer now, and waits up to Config.ShutdownTimeout
// for in-flight requests (an intake finishes its publish and its record).
// It returns nil after a clean shutdown; it does not close the Deps.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: min(10*time.Second, s.cfg.ReadTimeout),
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if s.cfg.TLSCert != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if s.topo.Resizing() {
		// Before the first request: an apiserver started after the
		// switch publishes to the new queues at once.
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		switched := s.resizeSwitched(rctx)
		cancel()
		if !switched {
			fctx, stop := context.WithCancel(ctx)
			defer stop()
			go s.followResize(fctx)
		}
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLSCert != "" {
			errc <- srv.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("apiserver: cannot serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.beginShutdown()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("apiserver: cannot shut down gracefully: %w", err)
	}
	return nil
}

// beginShutdown makes long-polls answer with the current status.
func (s *Server) beginShutdown() { s.stopOnce.Do(func() { close(s.stopping) }) }
