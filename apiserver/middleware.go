package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// Keys of values that middleware and handlers keep on the echo.Context.
const (
	ctxClaims = "claims"    // *auth.Claims of the request's token
	ctxClient = "client_id" // the token's subject, for the request log
	ctxMsgID  = "msg_id"    // the command's message ID key, for the request log
	// ctxBodyRead is set once the handler reads the request body.
	ctxBodyRead = "body_read"
	// ctxInFlight is true while the request holds one of the
	// Config.MaxInFlight places.
	ctxInFlight = "in_flight"
)

// retryAfterOverloaded is the Retry-After (seconds) of a 503 for too many
// requests in flight.
const retryAfterOverloaded = 1

// overloaded is the error object of a request refused because
// Config.MaxInFlight requests are in flight (built once: it is the
// cheap answer of an overloaded server).
var overloaded = protocol.NewError(protocol.CodeUnavailable,
	"server overloaded: too many requests in flight; retry after "+strconv.Itoa(retryAfterOverloaded)+"s",
	map[string]any{"reason": protocol.ReasonOverloaded, "retry_after": retryAfterOverloaded})

// admit bounds the requests in flight to Config.MaxInFlight: beyond it a
// request is answered 503 (-32016, "server overloaded") with Retry-After
// at once, before its token is checked or its body read, so that an
// overloaded server sheds load instead of queueing it with ever growing
// latency. It runs after observe, which logs and counts the 503.
func (s *Server) admit(next echo.HandlerFunc) echo.HandlerFunc {
	if s.cfg.MaxInFlight < 0 {
		return next
	}
	limit := int64(s.cfg.MaxInFlight)
	return func(c echo.Context) error {
		if s.inFlight.Add(1) > limit {
			s.inFlight.Add(-1)
			return &apiError{status: http.StatusServiceUnavailable, rpc: overloaded, retryAfter: retryAfterOverloaded}
		}
		c.Set(ctxInFlight, true)
		defer s.leaveInFlight(c)
		return next(c)
	}
}

// leaveInFlight gives up the request's place among those in flight, if it
// holds one: at its end, or before a long-poll waits.
func (s *Server) leaveInFlight(c echo.Context) {
	s.giveShare(c)
	if held, _ := c.Get(ctxInFlight).(bool); held {
		c.Set(ctxInFlight, false)
		s.inFlight.Add(-1)
	}
}

// observe records every request: the request log (slog, with client_id
// and msg_id when known, and trace_id), gw_api_requests_total and
// gw_api_request_duration_seconds, and the request's server span, which
// continues the request's W3C traceparent header. Without tracing, a
// request without a valid traceparent gets a new trace ID all the same
// (telemetry.EnsureTrace): its commands carry it. Errors are rendered
// here, so the status is the one the client gets. Probes and scrapes
// (/healthz, /readyz, /metrics) get no span.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		req := c.Request()
		var span trace.Span
		if p := req.URL.Path; p != "/healthz" && p != "/readyz" && p != "/metrics" {
			var ctx context.Context
			ctx, span = telemetry.Tracer().Start(
				telemetry.ContextWithTraceParent(req.Context(), req.Header.Get("traceparent")),
				req.Method, trace.WithSpanKind(trace.SpanKindServer))
			c.SetRequest(req.WithContext(telemetry.EnsureTrace(ctx)))
		}
		// Every answer is JSON or a document of a known type: browsers must
		// not sniff another.
		c.Response().Header().Set("X-Content-Type-Options", "nosniff")
		if err := next(c); err != nil {
			c.Error(err)
		}
		took := time.Since(start)
		route := c.Path()
		if route == "" || c.Response().Status == http.StatusNotFound && !s.isRoute(c) {
			route = "unmatched"
		}
		status := c.Response().Status
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(took.Seconds())
		attrs := []slog.Attr{
			slog.String("method", c.Request().Method),
			slog.String("route", route),
			slog.String("path", telemetry.Clip(c.Request().URL.Path)),
			slog.Int("status", status),
			slog.Duration("latency", took),
		}
		if v, ok := c.Get(ctxClient).(string); ok {
			attrs = append(attrs, slog.String("client_id", v))
		}
		if v, ok := c.Get(ctxMsgID).(string); ok {
			attrs = append(attrs, slog.String("msg_id", v))
		}
		level := slog.LevelInfo
		switch {
		case status >= 500:
			level = slog.LevelWarn
		case route == "/healthz" || route == "/readyz" || route == "/metrics":
			level = slog.LevelDebug // probes and scrapes, every few seconds
		}
		s.log.LogAttrs(c.Request().Context(), level, "request", attrs...)
		if span != nil {
			span.SetName(c.Request().Method + " " + route)
			span.SetAttributes(attribute.String("http.request.method", c.Request().Method),
				attribute.String("http.route", route), attribute.Int("http.response.status_code", status))
			if status >= 500 {
				span.SetStatus(codes.Error, http.StatusText(status))
			}
			span.End()
		}
		return nil
	}
}

// isRoute reports whether the request matched one of the API's routes
// (echo sets Path to the pattern even for its 404 and 405 handlers).
func (s *Server) isRoute(c echo.Context) bool {
	for _, r := range s.echo.Routes() {
		if r.Path == c.Path() {
			return true
		}
	}
	return false
}

// recoverPanic turns a handler's panic into a 500 and logs it.
func (s *Server) recoverPanic(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				s.log.Error("panic in handler", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return next(c)
	}
}

// authenticate checks the bearer token (HS256, signature, expiry, claims)
// and that its role is one of roles, before the body is read. Any failure
// is 401 (-32010).
func (s *Server) authenticate(roles ...auth.Role) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			header := c.Request().Header.Get(echo.HeaderAuthorization)
			tok := auth.BearerToken(header)
			if tok == "" {
				if header == "" {
					return errUnauthorized("no token: send Authorization: Bearer <token>")
				}
				return errUnauthorized("the Authorization header must be \"Bearer <token>\"")
			}
			claims, err := s.verifier.Verify(tok)
			if err != nil {
				return errUnauthorized(authReason(err))
			}
			c.Set(ctxClient, claims.Subject)
			if !slices.Contains(roles, claims.Role) {
				return errUnauthorized(fmt.Sprintf("role %q may not use this endpoint", claims.Role))
			}
			c.Set(ctxClaims, claims)
			if err := s.takeShare(c, claims.Subject); err != nil {
				return err
			}
			return next(c)
		}
	}
}

// authReason is the client-facing reason of a Verify error.
func authReason(err error) string {
	switch {
	case errors.Is(err, auth.ErrMissing):
		return "no token"
	case errors.Is(err, auth.ErrExpired):
		return "token expired"
	case errors.Is(err, auth.ErrSignature):
		return "bad signature or algorithm (HS256 only)"
	case errors.Is(err, auth.ErrMalformed):
		return "malformed token"
	}
	return "invalid token claims"
}

// claimsOf returns the verified claims authenticate stored.
func claimsOf(c echo.Context) *auth.Claims {
	cl, _ := c.Get(ctxClaims).(*auth.Claims)
	return cl
}

// actingClient is the client whose commands the request reads or
// changes: the token's subject, or, for an operator, ?client= when given.
// A client naming another client gets 403.
func actingClient(c echo.Context) (string, error) {
	cl := claimsOf(c)
	q := c.QueryParam("client")
	if q == "" || q == cl.Subject {
		return cl.Subject, nil
	}
	if cl.Role != auth.RoleOperator {
		return "", errForbidden("only operators may name another client")
	}
	if !protocol.ValidIdentity(q) {
		return "", errBadRequest("client: not a valid identity")
	}
	return q, nil
}

// rateLimit applies the per-client token bucket (Config.Rate, Burst):
// 429 (-32015) with Retry-After when the client's bucket is empty.
func (s *Server) rateLimit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		cl := claimsOf(c)
		if cl == nil {
			return next(c)
		}
		if wait, ok := s.limiter.allow(cl.Subject, time.Now()); !ok {
			secs := int(math.Ceil(wait.Seconds()))
			if secs < 1 {
				secs = 1
			}
			e := newAPIError(protocol.NewError(protocol.CodeRateLimited,
				"rate limited: too many requests, retry after "+strconv.Itoa(secs)+"s",
				map[string]any{"retry_after": secs}))
			e.retryAfter = secs
			return e
		}
		return next(c)
	}
}

// limiter is a token bucket per client. Buckets idle long enough to be
// full again are forgotten, so memory follows the active clients.
type limiter struct {
	limit rate.Limit
	burst int
	off   bool

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newLimiter(r float64, burst int) *limiter {
	return &limiter{limit: rate.Limit(r), burst: burst, off: r < 0, buckets: map[string]*bucket{}}
}

// allow takes one token of client's bucket; when there is none it returns
// false and how long until there will be one.
func (l *limiter) allow(client string, now time.Time) (time.Duration, bool) {
	if l.off {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b := l.buckets[client]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[client] = b
	}
	b.last = now
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// sweep forgets buckets idle for longer than a full refill, once a minute.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.lastSweep) < time.Minute {
		return
	}
	l.lastSweep = now
	refill := time.Minute
	if l.limit > 0 {
		refill = max(refill, time.Duration(float64(l.burst)/float64(l.limit)*float64(time.Second)))
	}
	for k, b := range l.buckets {
		if now.Sub(b.last) > refill {
			delete(l.buckets, k)
		}
	}
}
