package main

import "testing"

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
