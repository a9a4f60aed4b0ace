package main

import (
	"testing"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestNoSecretPrinted: --help of every command and flag errors never
// show GW_AUTH_SECRET.
func TestNoSecretPrinted(t *testing.T) {
	t.Parallel()
	testenv.RequireNoSecretPrinted(t, run, []string{"--help"}, []string{"send", "--help"}, []string{"load", "--help"},
		[]string{"token", "--help"}, []string{"--no-such-flag"},
		[]string{"get", "--help"}, []string{"list", "--help"}, []string{"cancel", "--help"}, []string{"wait", "--help"},
		[]string{"dead", "--help"}, []string{"replay", "--help"}, []string{"connect", "--help"})
}
