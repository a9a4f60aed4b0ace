package main

import (
	"testing"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestVersion: apiserver --version prints the module path and the Go version
// and exits 0, without any configuration.
func TestVersion(t *testing.T) {
	t.Parallel()
	testenv.RequireVersion(t, ".")
}
