package main

import (
	"testing"
	"time"
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
