package protocol

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func TestErrorCodes(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want int
	}{
		{"CodeParseError", CodeParseError, -32700},
		{"CodeInvalidRequest", CodeInvalidRequest, -32600},
		{"CodeMethodNotFound", CodeMethodNotFound, -32601},
		{"CodeInvalidParams", CodeInvalidParams, -32602},
		{"CodeInternalError", CodeInternalError, -32603},
		{"CodeTimeout", CodeTimeout, -32001},
		{"CodeExpired", CodeExpired, -32002},
		{"CodeDead", CodeDead, -32003},
		{"CodeCancelled", CodeCancelled, -32004},
		{"CodeRejected", CodeRejected, -32005},
		{"CodeUnauthorized", CodeUnauthorized, -32010},
		{"CodeForbidden", CodeForbidden, -32011},
		{"CodeNotFound", CodeNotFound, -32012},
		{"CodeConflict", CodeConflict, -32013},
		{"CodeTooLarge", CodeTooLarge, -32014},
		{"CodeRateLimited", CodeRateLimited, -32015},
		{"CodeUnavailable", CodeUnavailable, -32016},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		code int
		want int
	}{
		{CodeParseError, http.StatusBadRequest},
		{CodeInvalidRequest, http.StatusBadRequest},
		{CodeMethodNotFound, http.StatusBadRequest},
		{CodeInvalidParams, http.StatusBadRequest},
		{CodeUnauthorized, http.StatusUnauthorized},
		{CodeForbidden, http.StatusForbidden},
		{CodeNotFound, http.StatusNotFound},
		{CodeConflict, http.StatusConflict},
		{CodeTooLarge, http.StatusRequestEntityTooLarge},
		{CodeRateLimited, http.StatusTooManyRequests},
		{CodeUnavailable, http.StatusServiceUnavailable},
		{CodeInternalError, http.StatusInternalServerError},
		{CodeTimeout, http.StatusInternalServerError},
		{0, http.StatusInternalServerError},
		{-32099, http.StatusInternalServerError},
		{1, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		if got := HTTPStatus(tt.code); got != tt.want {
			t.Errorf("HTTPStatus(%d) = %d, want %d", tt.code, got, tt.want)
		}
	}
}

func TestErrorConstructors(t *testing.T) {
	tests := []struct {
		name   string
		err    *Error
		code   int
		status int
		msg    string
	}{
		{"ErrParse", ErrParse("x"), CodeParseError, 400, "parse error: x"},
		{"ErrInvalidRequest", ErrInvalidRequest("x"), CodeInvalidRequest, 400, "invalid request: x"},
		{"ErrUnauthorized", ErrUnauthorized("x"), CodeUnauthorized, 401, "unauthorized: x"},
		{"ErrForbidden", ErrForbidden("x"), CodeForbidden, 403, "forbidden: x"},
		{"ErrNotFound", ErrNotFound("x"), CodeNotFound, 404, "not found: x"},
		{"ErrConflict", ErrConflict("x"), CodeConflict, 409, "conflict: x"},
		{"ErrTooLarge", ErrTooLarge("x"), CodeTooLarge, 413, "request too large: x"},
		{"ErrRateLimited", ErrRateLimited("x"), CodeRateLimited, 429, "rate limited: x"},
		{"ErrUnavailable", ErrUnavailable("x"), CodeUnavailable, 503, "service unavailable: x"},
	}
	for _, tt := range tests {
		if tt.err.Code != tt.code || tt.err.Message != tt.msg || HTTPStatus(tt.err.Code) != tt.status ||
			string(tt.err.Data) != `{"source":"gateway"}` || tt.err.Source() != SourceGateway {
			t.Errorf("%s(%q) = %d %q %s, want %d %q {\"source\":\"gateway\"} (HTTP %d)",
				tt.name, "x", tt.err.Code, tt.err.Message, tt.err.Data, tt.code, tt.msg, tt.status)
		}
	}
}

func TestNewError(t *testing.T) {
	tests := []struct {
		fields map[string]any
		want   string
	}{
		{nil, `{"source":"gateway"}`},
		{map[string]any{}, `{"source":"gateway"}`},
		{map[string]any{"id": "r-1", "status": "queued"}, `{"id":"r-1","source":"gateway","status":"queued"}`},
		{map[string]any{"source": "device"}, `{"source":"gateway"}`},
		{map[string]any{"source": nil, "n": 1}, `{"n":1,"source":"gateway"}`},
		{map[string]any{"bad": make(chan int)}, `{"source":"gateway"}`}, // cannot be marshaled
	}
	for _, tt := range tests {
		e := NewError(CodeConflict, "conflict", tt.fields)
		if string(e.Data) != tt.want || e.Source() != SourceGateway || e.Code != CodeConflict || e.Message != "conflict" {
			t.Errorf("NewError(%d, %q, %v) = %d %q %s, want data %s", CodeConflict, "conflict", tt.fields, e.Code, e.Message, e.Data, tt.want)
		}
	}
	// The caller's map is not changed.
	fields := map[string]any{"a": 1}
	NewError(1, "m", fields)
	if len(fields) != 1 {
		t.Errorf("NewError changed its fields to %v, want them kept", fields)
	}
}

func TestErrorJSON(t *testing.T) {
	e := NewError(CodeNotFound, "not found: command", map[string]any{"id": 7})
	b, err := json.Marshal(e)
	const want = `{"code":-32012,"message":"not found: command","data":{"id":7,"source":"gateway"}}`
	if err != nil || string(b) != want {
		t.Errorf("json.Marshal(%v) = %s, %v, want %s", e, b, err, want)
	}
	if got := (&Error{Code: 1, Message: "m"}); got.Error() != "jsonrpc error 1: m" {
		t.Errorf("Error{1, m}.Error() = %q, want %q", got.Error(), "jsonrpc error 1: m")
	}
	if got := ErrInvalidRequest("x").Error(); got != "jsonrpc error -32600: invalid request: x" {
		t.Errorf("ErrInvalidRequest(%q).Error() = %q, want %q", "x", got, "jsonrpc error -32600: invalid request: x")
	}
	var target *Error
	if wrapped := error(ErrNotFound("x")); !errors.As(wrapped, &target) || target.Code != CodeNotFound {
		t.Errorf("errors.As(ErrNotFound(%q)) = %v, want code %d", "x", target, CodeNotFound)
	}
}

func TestErrorSource(t *testing.T) {
	tests := []struct {
		data string
		want string
	}{
		{``, ""},
		{`null`, ""},
		{`{}`, ""},
		{`{"source":"device"}`, "device"},
		{`{"source":"gateway","x":1}`, "gateway"},
		{`{"source":1}`, ""},
		{`"gateway"`, ""},
		{`[1]`, ""},
	}
	for _, tt := range tests {
		e := &Error{Code: 1, Message: "m", Data: json.RawMessage(tt.data)}
		if got := e.Source(); got != tt.want {
			t.Errorf("Error{Data: %s}.Source() = %q, want %q", tt.data, got, tt.want)
		}
	}
}

func TestResultError(t *testing.T) {
	tests := []struct {
		s      Status
		detail string
		code   int
		msg    string
	}{
		{StatusTimeout, "", CodeTimeout, "timeout"},
		{StatusTimeout, "no answer within 30s", CodeTimeout, "timeout: no answer within 30s"},
		{StatusExpired, "", CodeExpired, "expired"},
		{StatusDead, "", CodeDead, "dead"},
		{StatusCancelled, "", CodeCancelled, "cancelled"},
		{StatusRejected, "mailbox full", CodeRejected, "rejected: mailbox full"},
	}
	for _, tt := range tests {
		e := ResultError(tt.s, tt.detail)
		if e == nil {
			t.Errorf("ResultError(%q, %q) = nil, want code %d", tt.s, tt.detail, tt.code)
			continue
		}
		wantData := `{"source":"gateway","status":"` + string(tt.s) + `"}`
		if e.Code != tt.code || e.Message != tt.msg || string(e.Data) != wantData {
			t.Errorf("ResultError(%q, %q) = %d %q %s, want %d %q %s", tt.s, tt.detail, e.Code, e.Message, e.Data, tt.code, tt.msg, wantData)
		}
	}
	for _, s := range []Status{StatusPending, StatusQueued, StatusSent, StatusDelivered, StatusSucceeded, StatusFailed, "x"} {
		if e := ResultError(s, "d"); e != nil {
			t.Errorf("ResultError(%q, %q) = %v, want nil", s, "d", e)
		}
	}
	// Every final status decided by the gateway has a result error; the
	// client sees the status in data.status.
	for _, s := range Statuses {
		if s.Final() && s != StatusSucceeded && s != StatusFailed {
			e := ResultError(s, "")
			if e == nil || !strings.Contains(string(e.Data), string(s)) {
				t.Errorf("ResultError(%q, \"\") = %v, want an error naming the status", s, e)
			}
		}
	}
}

func TestItoa(t *testing.T) {
	for _, n := range []int64{0, 1, -1, 9, 10, -32600, 29_000_000, 1<<63 - 1} {
		want := strconv.FormatInt(n, 10)
		if got := itoa(n); got != want {
			t.Errorf("itoa(%d) = %q, want %q", n, got, want)
		}
	}
}
