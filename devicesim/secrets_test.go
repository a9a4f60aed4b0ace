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
		[]string{"token", "--help"}, []string{"--no-such-flag"})
}
