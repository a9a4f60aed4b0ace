package main

import (
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/iotgw/gateway/protocol"
)

// FuzzNotBeforeParam: not_before (an outsider's string) never panics, and
// is either refused or a delay from 0 to 30 days.
func FuzzNotBeforeParam(f *testing.F) {
	for _, s := range []string{"", "10m", "2h", "30", "-5m", "tomorrow", "720h", "721h",
		"2026-12-08T02:00:00Z", "2020-01-01T00:00:00Z", "2026-12-08T02:00:00.123456789+02:00", "9999999999999h"} {
		f.Add(s)
	}
	now := time.Unix(1_796_000_000, 0)
	f.Fuzz(func(t *testing.T, v string) {
		d, err := notBeforeParam(v, now)
		if err != nil {
			if d != 0 {
				t.Errorf("notBeforeParam(%q) = %v with error %v, want 0", v, d, err)
			}
			return
		}
		if d < 0 || d > MaxNotBefore {
			t.Errorf("notBeforeParam(%q) = %v, want from 0 to %v", v, d, MaxNotBefore)
		}
	})
}

// FuzzAckToken: an ack token (an outsider's string) is taken only in the
// form of a stream entry ID.
func FuzzAckToken(f *testing.F) {
	for _, s := range []string{"1-1", "1796625736813-0", "x", "", "1-", "-1", "1-1-1", "01-02", "99999999999999999999-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if !ackToken.MatchString(v) {
			return
		}
		var digits, dashes int
		for _, r := range v {
			switch {
			case r >= '0' && r <= '9':
				digits++
			case r == '-':
				dashes++
			default:
				t.Fatalf("ack token %q taken with %q in it", v, r)
			}
		}
		if dashes != 1 || digits < 2 || len(v) > 41 {
			t.Errorf("ack token %q taken, want digits-digits of at most 41 bytes", v)
		}
	})
}

// FuzzRetryParams: the retry options (an outsider's query) never panic,
// and are either a 400 or a policy within bounds whose retry_on is in
// canonical form and needs retries.
func FuzzRetryParams(f *testing.F) {
	for _, s := range [][4]string{
		{"2", "", "device_error", ""}, {"", "3", "timeout,rejected", "1s,2"}, {"1", "2", "", ""}, {"", "", "expired", ""},
		{"11", "", "", ""}, {"", "0", "", ""}, {"x", "", "", ""}, {"1", "", "timeout,,", ""}, {"1", "", "", "1ms"},
		{"1", "", "rejected, expired", "100ms,10,1h"}, {"-1", "", "", ""}, {"", "12", "device_error", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, retries, maxAttempts, on, backoff string) {
		q := url.Values{}
		for name, v := range map[string]string{"retries": retries, "max_attempts": maxAttempts, "retry_on": on, "retry_backoff": backoff} {
			if v != "" {
				q.Set(name, v)
			}
		}
		for _, oneWay := range []bool{false, true} {
			p, err := retryParams(q, oneWay)
			if err != nil {
				var ae *apiError
				if !errors.As(err, &ae) || ae.status != http.StatusBadRequest {
					t.Fatalf("retryParams(%v, %v) error %v, want a 400", q, oneWay, err)
				}
				continue
			}
			if p.retries < 0 || p.retries > MaxRetries || (oneWay && (p.retries > 0 || p.on != "")) || (p.on != "" && p.retries == 0) {
				t.Fatalf("retryParams(%v, %v) = %+v, want a policy within bounds", q, oneWay, p)
			}
			if p.on != "" {
				if c, err := protocol.ParseRetryOn(p.on); err != nil || c != p.on {
					t.Fatalf("retryParams(%v) retry_on %q, want canonical", q, p.on)
				}
			}
		}
	})
}
