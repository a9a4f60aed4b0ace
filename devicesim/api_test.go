package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/telemetry"
)

func TestAPIErrorNotAccepted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  APIError
		want bool
	}{
		{"bad request", APIError{Status: 400, Code: -32600}, true},
		{"conflict", APIError{Status: 409, Code: -32013}, true},
		{"rate limited", APIError{Status: 429, Code: -32015}, true},
		{"overloaded", APIError{Status: 503, Code: -32016, Reason: "overloaded"}, true},
		{"not accepted", APIError{Status: 503, Code: -32016, Reason: "not_accepted"}, true},
		{"outcome unknown", APIError{Status: 503, Code: -32016, Reason: "outcome_unknown"}, false},
		{"503 without a reason", APIError{Status: 503, Code: -32016}, false},
		{"internal error", APIError{Status: 500}, false},
	} {
		if got := tc.err.NotAccepted(); got != tc.want {
			t.Errorf("%s: NotAccepted() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// SendCommand sends a traceparent also with tracing off (a new trace),
// and names its trace ID, which the gateway's log lines carry.
func TestSendCommandTraceParent(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("traceparent")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"id":"x","status":"queued","status_url":"/v1/commands/x"}`))
	}))
	defer srv.Close()
	acc, status, err := NewAPI(srv.URL).SendCommand(t.Context(), "tok", "dev-1", []byte(`{}`), time.Second, time.Minute)
	if err != nil || status != http.StatusAccepted {
		t.Fatalf("SendCommand = %d, %v, want 202", status, err)
	}
	tp := <-got
	if id := telemetry.TraceIDOf(tp); id == "" || id != acc.TraceID {
		t.Errorf("traceparent header %q, Accepted.TraceID %q: want a valid one of that trace", tp, acc.TraceID)
	}
	if acc.Status != "queued" {
		t.Errorf("Accepted.Status = %q, want queued", acc.Status)
	}
}
