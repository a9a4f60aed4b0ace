package testenv

import (
	"context"
	"io"
	"strings"
	"testing"
)

// SecretEnv is a set of GW_* variables carrying known secrets: a token
// key and passwords in every URL a service takes.
var SecretEnv = map[string]string{
	"GW_AUTH_SECRET":   "known-secret-0123456789abcdef0123456789",
	"GW_AMQP_URL":      "amqp://gw:known-amqp-password@127.0.0.1:5999/",
	"GW_REDIS_URL":     "redis://:known-redis-password@127.0.0.1:6999/0",
	"GW_AMQP_MGMT_URL": "http://gw:known-mgmt-password@127.0.0.1:15999",
}

// secretValues are the strings no output may contain.
var secretValues = []string{"known-secret-0123456789abcdef0123456789", "known-amqp-password", "known-redis-password", "known-mgmt-password"}

// RequireNoSecretPrinted runs a service's run function with SecretEnv
// and each of argss (--help, a bad flag, a bad value) and fails t when
// its output or error shows one of the secrets (DESIGN §8.6).
func RequireNoSecretPrinted(t *testing.T, run func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error, argss ...[]string) {
	t.Helper()
	for _, args := range argss {
		var out SyncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // nothing may start: only parsing is under test
		err := run(ctx, args, func(k string) string { return SecretEnv[k] }, &out)
		shown := out.String()
		if err != nil {
			shown += "\n" + err.Error()
		}
		for _, s := range secretValues {
			if strings.Contains(shown, s) {
				t.Errorf("run %q printed the secret %q:\n%s", args, s, shown)
			}
		}
	}
}
