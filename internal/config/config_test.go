package config

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestBinderPrecedence(t *testing.T) {
	env := map[string]string{"GW_AMQP_URL": "amqp://env/", "GW_RETENTION": "3600", "GW_BODY_LIMIT": "1MiB", "GW_RATE": "5"}
	b := NewBinder("svc", func(k string) string { return env[k] })
	var url, ns string
	var ret time.Duration
	var limit int64
	var rate int
	b.String(&url, "amqp-url", DefaultAMQPURL, "RabbitMQ")
	b.String(&ns, "namespace", DefaultNamespace, "namespace")
	b.Duration(&ret, "retention", DefaultRetention, "retention")
	b.Bytes(&limit, "body-limit", DefaultBodyLimit, "body limit")
	b.Int(&rate, "rate", DefaultRate, "rate")
	if err := b.Parse([]string{"--namespace", "flagns", "--rate", "7"}); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"amqp-url from env", url, "amqp://env/"},
		{"namespace from flag", ns, "flagns"},
		{"retention from env seconds", ret.String(), "1h0m0s"},
		{"body limit from env", itoa(limit), "1048576"},
		{"rate flag over env", itoa(int64(rate)), "7"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestBinderBadEnv(t *testing.T) {
	b := NewBinder("svc", func(k string) string { return map[string]string{"GW_RETENTION": "soon"}[k] })
	var ret time.Duration
	b.Duration(&ret, "retention", DefaultRetention, "retention")
	err := b.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), "GW_RETENTION") {
		t.Fatalf("Parse = %v, want an error naming GW_RETENTION", err)
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"64KiB", 64 << 10, true}, {"65536", 65536, true}, {"1 MiB", 1 << 20, true},
		{"2kb", 2048, true}, {"", 0, false}, {"KiB", 0, false}, {"5XB", 0, false},
		{"99999999999999999999", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30s", 30 * time.Second, true}, {"30", 30 * time.Second, true}, {"1h", time.Hour, true},
		{"-5", 0, false}, {"abc", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
