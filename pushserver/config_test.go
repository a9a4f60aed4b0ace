package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRunConfig: run refuses a configuration it cannot use, or one that
// the Node would silently replace by a default, before it opens anything,
// with an error that names the setting.
func TestRunConfig(t *testing.T) {
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
		{"no secret", nil, env("GW_AUTH_SECRET", ""), "GW_AUTH_SECRET"},
		{"bad log format", []string{"--log-format", "xml"}, env(), `log-format "xml" must be json or text`},
		{"bad log format variable", nil, env("GW_LOG_FORMAT", "yaml"), `log-format "yaml"`},
		{"bad log level", []string{"--log-level", "loud"}, env(), "log-level"},
		{"bad variable", nil, env("GW_CONFIRM_TIMEOUT", "soon"), "GW_CONFIRM_TIMEOUT"},
		{"bad flag", []string{"--nope"}, env(), "invalid flags"},
		{"zero inflight", []string{"--inflight", "0"}, env(), "inflight must be 1 to 65535"},
		{"zero confirm timeout", nil, env("GW_CONFIRM_TIMEOUT", "0s"), "confirm-timeout must be positive"},
		{"zero subscriptions", []string{"--max-subscriptions", "0"}, env(), "max-subscriptions must be positive"},
		{"zero shed rate", []string{"--shed-rate", "0"}, env(), "shed-rate must be positive"},
		{"negative ring grace", []string{"--ring-grace", "-1s"}, env(), "ring-grace"},
		{"zero keep alive", []string{"--max-keepalive", "0s"}, env(), "max-keepalive must be positive"},
		{"negative max clients", []string{"--max-clients", "-1"}, env(), "max-clients"},
		{"cert without key", []string{"--tls-cert", "c.pem"}, env(), "tls-cert and tls-key"},
		{"no queues", []string{"--queues", "0"}, env(), "queues"},
		{"bad partitions", nil, env("GW_PARTITIONS", "100"), "partitions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tt.args, tt.getenv, &out)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
			if strings.Contains(out.String(), `"level"`) {
				t.Errorf("run(%q) logged before refusing: %s", tt.args, out.String())
			}
		})
	}

	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, env(), &out); err != nil {
		t.Fatalf("run(-h) = %v, want nil", err)
	}
	for _, name := range []string{"mqtt-addr", "node-id", "auth-secret", "inflight", "ring-grace", "log-level", "log-format", "GW_LOG_FORMAT", "GW_RING_GRACE"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("-h does not mention %s:\n%s", name, out.String())
		}
	}
}
