package protocol

import (
	"encoding/json"
	"net/http"
)

// JSON-RPC 2.0 error codes of the specification.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603
)

// Gateway result codes: the error of a command's result when the gateway,
// not the device, decided its final status (data.source = "gateway").
const (
	CodeTimeout   = -32001
	CodeExpired   = -32002
	CodeDead      = -32003
	CodeCancelled = -32004
	CodeRejected  = -32005
	CodeLost      = -32006
)

// Gateway HTTP error codes, each paired with one HTTP status (HTTPStatus).
const (
	CodeUnauthorized = -32010
	CodeForbidden    = -32011
	CodeNotFound     = -32012
	CodeConflict     = -32013
	CodeTooLarge     = -32014
	CodeRateLimited  = -32015
	CodeUnavailable  = -32016
)

// SourceGateway is data.source of every error the gateway makes; a device
// may use the same codes for its own errors, and source tells them apart.
const SourceGateway = "gateway"

// Error is a JSON-RPC 2.0 error object. It implements error.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// Error returns the message with its code.
func (e *Error) Error() string {
	return "jsonrpc error " + itoa(int64(e.Code)) + ": " + e.Message
}

// NewError returns a gateway error: data is {"source":"gateway"} plus the
// given fields (which may not override source).
func NewError(code int, message string, fields map[string]any) *Error {
	data := map[string]any{}
	for k, v := range fields {
		data[k] = v
	}
	data["source"] = SourceGateway
	raw, err := json.Marshal(data)
	if err != nil {
		raw = []byte(`{"source":"gateway"}`)
	}
	return &Error{Code: code, Message: message, Data: raw}
}

// Source returns data.source of e, or "" when there is none.
func (e *Error) Source() string {
	var d struct {
		Source string `json:"source"`
	}
	if len(e.Data) == 0 || json.Unmarshal(e.Data, &d) != nil {
		return ""
	}
	return d.Source
}

// Constructors for the errors of DESIGN §3 and §4.
func ErrParse(detail string) *Error {
	return NewError(CodeParseError, "parse error: "+detail, nil)
}
func ErrInvalidRequest(detail string) *Error {
	return NewError(CodeInvalidRequest, "invalid request: "+detail, nil)
}
func ErrUnauthorized(detail string) *Error {
	return NewError(CodeUnauthorized, "unauthorized: "+detail, nil)
}
func ErrForbidden(detail string) *Error {
	return NewError(CodeForbidden, "forbidden: "+detail, nil)
}
func ErrNotFound(detail string) *Error {
	return NewError(CodeNotFound, "not found: "+detail, nil)
}
func ErrConflict(detail string) *Error {
	return NewError(CodeConflict, "conflict: "+detail, nil)
}
func ErrTooLarge(detail string) *Error {
	return NewError(CodeTooLarge, "request too large: "+detail, nil)
}
func ErrRateLimited(detail string) *Error {
	return NewError(CodeRateLimited, "rate limited: "+detail, nil)
}
func ErrUnavailable(detail string) *Error {
	return NewError(CodeUnavailable, "service unavailable: "+detail, nil)
}

// The data.reason of a 503 (-32016) of intake says what became of the
// command:
const (
	// ReasonOverloaded: refused before the body was read (over
	// GW_MAX_INFLIGHT); nothing was stored or published.
	ReasonOverloaded = "overloaded"
	// ReasonNotAccepted: the command was certainly not queued (Redis
	// could not reserve it, or RabbitMQ refused, returned or never got the
	// message). A retry with the same id publishes it afresh.
	ReasonNotAccepted = "not_accepted"
	// ReasonOutcomeUnknown: the message may be queued (the confirm never
	// came, or the channel closed before it, or an earlier request with
	// the same id is still being published), or Redis failed midway
	// through the reservation (without a retry the command then ends
	// expired or lost, and the client gets that result). A retry with the same id is
	// safe: it answers 200 with the command once it is known, or
	// publishes again once the reservation's lease has run out.
	ReasonOutcomeUnknown = "outcome_unknown"
)

// ErrNotAccepted is the 503 of a command that was certainly not queued.
func ErrNotAccepted(detail string) *Error {
	return NewError(CodeUnavailable, "service unavailable: "+detail+"; the command was not accepted, retry with the same id",
		map[string]any{"reason": ReasonNotAccepted})
}

// ErrOutcomeUnknown is the 503 of a command that may have been queued.
func ErrOutcomeUnknown(detail string) *Error {
	return NewError(CodeUnavailable, "service unavailable: "+detail+"; the command may have been accepted: retry with the same id to learn its outcome (a retry never runs it twice)",
		map[string]any{"reason": ReasonOutcomeUnknown})
}

// ResultError returns the gateway error a client receives when its
// command ends in status s without a device answer (timeout, expired,
// dead, cancelled, rejected); nil for other statuses.
func ResultError(s Status, detail string) *Error {
	code := s.ResultCode()
	if code == 0 {
		return nil
	}
	msg := string(s)
	if detail != "" {
		msg += ": " + detail
	}
	return NewError(code, msg, map[string]any{"status": string(s)})
}

// RefusedError returns the gateway error a client receives when the
// device refused its command with an MQTT 5 PUBACK reason code of 0x80 or
// more (status rejected, set by the push server): -32005, with the reason
// code in data.mqtt_reason_code.
func RefusedError(reasonCode byte) *Error {
	return NewError(CodeRejected, string(StatusRejected)+": refused by the device",
		map[string]any{"status": string(StatusRejected), "mqtt_reason_code": int(reasonCode)})
}

// HTTPStatus returns the HTTP status that goes with an error code.
func HTTPStatus(code int) int {
	switch code {
	case CodeParseError, CodeInvalidRequest, CodeInvalidParams, CodeMethodNotFound:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
