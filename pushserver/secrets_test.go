package main

import (
	"testing"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestNoSecretPrinted: --help and flag errors list the documented
// defaults, never the GW_* values (a secret, passwords in URLs).
func TestNoSecretPrinted(t *testing.T) {
	t.Parallel()
	testenv.RequireNoSecretPrinted(t, run, []string{"--help"}, []string{"--no-such-flag"}, []string{"--log-format", "xml"})
}
