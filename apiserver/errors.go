package main

import (
	"encoding/json"
	"errors"
	"github.com/iotgw/gateway/internal/telemetry"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/iotgw/gateway/protocol"
)

// retryAfterUnavailable is the Retry-After (seconds) of a 503: RabbitMQ or
// Redis was unavailable or blocked for this request.
const retryAfterUnavailable = 1

// apiError is an error answered with an HTTP status and a JSON-RPC error
// object (DESIGN §3): {"error":{code,message,data}}, plus "id" when the
// request's id is known. Handlers and middleware return it as their error;
// Server.handleError renders it.
type apiError struct {
	status     int
	rpc        *protocol.Error
	id         json.RawMessage // the request's id, when known
	retryAfter int             // seconds for Retry-After; 0: no header
}

func (e *apiError) Error() string { return e.rpc.Error() }

// newAPIError wraps a gateway error with the HTTP status of its code; a
// 503 gets the default Retry-After.
func newAPIError(rpc *protocol.Error) *apiError {
	e := &apiError{status: protocol.HTTPStatus(rpc.Code), rpc: rpc}
	if e.status == http.StatusServiceUnavailable {
		e.retryAfter = retryAfterUnavailable
	}
	return e
}

func (e *apiError) withID(id json.RawMessage) *apiError { e.id = id; return e }

// errorBody is the JSON of an error answer and of a batch entry that
// failed.
type errorBody struct {
	ID    json.RawMessage `json:"id,omitempty"`
	Error *protocol.Error `json:"error"`
}

func (e *apiError) body() errorBody { return errorBody{ID: e.id, Error: e.rpc} }

// Shorthands for the errors of DESIGN §3.
func errBadRequest(detail string) *apiError {
	return newAPIError(protocol.ErrInvalidRequest(detail))
}
func errUnauthorized(detail string) *apiError {
	return newAPIError(protocol.ErrUnauthorized(detail))
}
func errForbidden(detail string) *apiError { return newAPIError(protocol.ErrForbidden(detail)) }
func errNotFound(detail string) *apiError  { return newAPIError(protocol.ErrNotFound(detail)) }
func errUnavailable(detail string) *apiError {
	return newAPIError(protocol.ErrUnavailable(detail))
}

// errNotAccepted is the 503 of a command certainly not queued, and
// errOutcomeUnknown the 503 of one that may be (protocol.ReasonNotAccepted,
// protocol.ReasonOutcomeUnknown).
func errNotAccepted(detail string) *apiError { return newAPIError(protocol.ErrNotAccepted(detail)) }
func errOutcomeUnknown(detail string) *apiError {
	return newAPIError(protocol.ErrOutcomeUnknown(detail))
}
func errTooLarge(limit int64) *apiError {
	return newAPIError(protocol.NewError(protocol.CodeTooLarge,
		"request too large: the body exceeds "+strconv.FormatInt(limit, 10)+" bytes",
		map[string]any{"limit": limit}))
}

// handleError is echo's HTTPErrorHandler: every error becomes a JSON-RPC
// error object with its HTTP status.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he):
		ae = s.fromEchoError(he)
	default:
		s.log.Error("request failed", "method", c.Request().Method, "path", telemetry.Clip(c.Request().URL.Path), "err", err)
		ae = &apiError{status: http.StatusInternalServerError,
			rpc: protocol.NewError(protocol.CodeInternalError, "internal error", nil)}
	}
	if ae.retryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
	}
	if ae.status == http.StatusUnauthorized { // RFC 6750 §3
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="iotgw", error="invalid_token"`)
	}
	if r := c.Request(); r.ContentLength != 0 && c.Get(ctxBodyRead) == nil {
		// Refused before its body was read (overloaded, over the
		// client's share, no token): answer now and close, instead of
		// letting net/http read the rest of the body first, which a
		// slow sender could stretch for the whole ReadTimeout.
		c.Response().Header().Set("Connection", "close")
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(ae.status)
		return
	}
	if werr := c.JSON(ae.status, ae.body()); werr != nil {
		s.log.Debug("cannot write error response", "err", werr)
	}
}

// fromEchoError translates echo's own errors (no route, wrong method,
// body too large).
func (s *Server) fromEchoError(he *echo.HTTPError) *apiError {
	switch he.Code {
	case http.StatusNotFound:
		return errNotFound("no such endpoint")
	case http.StatusMethodNotAllowed:
		return &apiError{status: http.StatusMethodNotAllowed,
			rpc: protocol.ErrInvalidRequest("method not allowed on this endpoint")}
	case http.StatusRequestEntityTooLarge:
		return errTooLarge(s.cfg.BodyLimit)
	case http.StatusUnauthorized:
		return errUnauthorized("missing or invalid token")
	}
	if he.Code >= 400 && he.Code < 500 {
		return &apiError{status: he.Code, rpc: protocol.ErrInvalidRequest(http.StatusText(he.Code))}
	}
	return &apiError{status: http.StatusInternalServerError,
		rpc: protocol.NewError(protocol.CodeInternalError, "internal error", nil)}
}
