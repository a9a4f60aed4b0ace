package main

import (
	"strings"
	"testing"
)

// FuzzGroupBody: the body of POST /v1/commands (an outsider's bytes)
// never panics, and is either refused or one valid request with exactly
// one target.
func FuzzGroupBody(f *testing.F) {
	for _, s := range []string{
		`{"request":{"jsonrpc":"2.0","method":"reboot","id":"g1"},"devices":["dev-1","dev-2"]}`,
		`{"request":{"jsonrpc":"2.0","method":"reboot","params":{"a":1},"id":7},"group":"floor-1"}`,
		`{"request":{"jsonrpc":"2.0","method":"x","id":"g"},"devices":["a"],"group":"b"}`,
		`{"request":{"jsonrpc":"2.0","method":"x"},"devices":["a"]}`,
		`{"request":null,"devices":[]}`, `{"devices":"a"}`, `{"request":1}`, `[]`, `{`, ``,
		`{"request":{"jsonrpc":"2.0","method":"x","id":"g"},"group":"a/b"}`,
		`{"request":{"jsonrpc":"2.0","method":"x","id":"g"},"devices":["a"]} {}`,
		`{"request":{"jsonrpc":"2.0","method":"x","id":"g"},"devices":["a"],"rate":5}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, req, err := parseGroupBody(raw)
		if err != nil {
			if b != nil || req != nil {
				t.Errorf("parseGroupBody(%q) returned a body with error %v", raw, err)
			}
			return
		}
		if req.ID.IsZero() || req.Method == "" {
			t.Errorf("parseGroupBody(%q) took a request without id or method", raw)
		}
		if b.Group != "" && len(b.Devices) > 0 {
			t.Errorf("parseGroupBody(%q) took two targets", raw)
		}
	})
}

// FuzzAbortAfter: abort_after (an outsider's string) is refused or a
// failure count from 1 to the number of children.
func FuzzAbortAfter(f *testing.F) {
	for _, s := range []string{"5%", "0%", "100%", "101%", "0.01%", "1", "0", "-1", "50", "10001", "NaN%", "1e400%", "%", "5 %", "abc"} {
		f.Add(s, uint16(1000))
	}
	f.Fuzz(func(t *testing.T, v string, total uint16) {
		n := max(int(total), 1)
		at, err := abortAt(v, n)
		if err != nil {
			if !strings.Contains(err.Error(), "abort_after") {
				t.Errorf("abortAt(%q, %d) error %q does not name abort_after", v, n, err)
			}
			return
		}
		if at < 1 || at > n {
			t.Errorf("abortAt(%q, %d) = %d, want from 1 to %d", v, n, at, n)
		}
	})
}

// FuzzRetryBackoff: retry_backoff (an outsider's string) is refused, or
// a backoff within its bounds.
func FuzzRetryBackoff(f *testing.F) {
	for _, s := range []string{"1s", "1s,2", "1s,2,30s", "100ms,10,1h", "10ms", "2h", "1s,0.5", "1s,11", "1s,2,500ms",
		"1s,2,30s,4", "soon", "1s,NaN", "1s,+Inf", ",", "", "1s,,", "30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		b, err := backoffParam(v, 3)
		if err != nil || v == "" {
			return
		}
		if b.Initial < MinBackoff || b.Max > MaxBackoff || b.Max < b.Initial || !(b.Multiplier >= 1 && b.Multiplier <= MaxBackoffFactor) {
			t.Errorf("backoffParam(%q) = %+v, out of bounds", v, b)
		}
		if w := b.Wait(11); w > b.Max || w < b.Initial {
			t.Errorf("backoffParam(%q).Wait(11) = %v, want from %v to %v", v, w, b.Initial, b.Max)
		}
	})
}
