package testenv

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// RequireVersion builds the command in pkgDir (a package path relative to
// the test's working directory: "." for the test's own) and checks that
// "<command> --version" exits 0 and prints one line with the module path
// and the Go version (internal/buildinfo).
func RequireVersion(t *testing.T, pkgDir string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cmd")
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, pkgDir).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkgDir, err, out)
	}
	cmd := exec.CommandContext(t.Context(), bin, "--version")
	// Without configuration: --version needs none.
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v, want exit status 0\n%s", pkgDir, err, out)
	}
	line := strings.TrimSpace(string(out))
	for _, want := range []string{"github.com/iotgw/gateway", runtime.Version()} {
		if !strings.Contains(line, want) {
			t.Errorf("%s --version printed %q, want it to contain %q", pkgDir, line, want)
		}
	}
	if strings.Count(line, "\n") != 0 {
		t.Errorf("%s --version printed %d lines, want one:\n%s", pkgDir, strings.Count(line, "\n")+1, line)
	}
}
