package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRunRefusesBadConfig: run refuses a bad log format or level, and
// values that the server would silently replace by a default, before it
// opens anything, with an error that names the setting.
func TestRunRefusesBadConfig(t *testing.T) {
	t.Parallel()
	env := func(kv ...string) func(string) string {
		kv = append([]string{"GW_AUTH_SECRET", testSecret}, kv...)
		return func(k string) string {
			for i := len(kv) - 2; i >= 0; i -= 2 { // the last one wins
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	tests := []struct {
		name    string
		args    []string
		getenv  func(string) string
		wantErr string
	}{
		{"bad log format", []string{"--log-format", "xml"}, env(), `log-format "xml" must be json or text`},
		{"bad log format variable", nil, env("GW_LOG_FORMAT", "yaml"), `log-format "yaml"`},
		{"bad log level", []string{"--log-level", "loud"}, env(), "log-level"},
		{"zero rate", []string{"--rate", "0"}, env(), "rate must be positive, or negative for no limit"},
		{"zero burst", nil, env("GW_BURST", "0"), "burst must be positive"},
		{"zero body limit", []string{"--body-limit", "0"}, env(), "body-limit must be positive"},
		{"zero retention", []string{"--retention", "0s"}, env(), "retention must be positive"},
		{"zero confirm timeout", []string{"--confirm-timeout", "0s"}, env(), "confirm-timeout must be positive"},
		{"zero max inflight", []string{"--max-inflight", "0"}, env(), "max-inflight"},
		{"empty http addr", []string{"--http-addr", ""}, env(), "http-addr"},
		{"argument", []string{"extra"}, env(), "unexpected arguments"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := run(context.Background(), tt.args, tt.getenv, &out)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: run(%q) = %v, want an error containing %q", tt.name, tt.args, err, tt.wantErr)
		}
		if strings.Contains(out.String(), `"level"`) {
			t.Errorf("%s: run(%q) logged before refusing: %s", tt.name, tt.args, out.String())
		}
	}
}
