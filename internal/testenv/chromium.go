package testenv

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Headless Chromium, for the tests that drive a page in a real browser
// (apiserver's dashboard, devicesim's browser client).
//
// The tests need a headless Chromium (Debian package chromium), which
// `make services` (deployments/local/services.sh) installs as root; no
// test installs anything. Without one a test fails, naming the command.

// ChromiumInstall is the command that installs Chromium.
const ChromiumInstall = "as root: apt-get install -y chromium (or make services, which does)"

// Chromium returns the path of a Chromium binary, failing t with the
// command that installs one when there is none.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("testenv: no Chromium: the page cannot be tested in a browser. Install it, %s", ChromiumInstall)
	return ""
}

// chromiumArgs are the flags of every headless run: no sandbox (tests run
// as root), nothing fetched in the background, a profile of its own.
func chromiumArgs(t testing.TB, flags []string) []string {
	return append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
		"--user-data-dir=" + t.TempDir(),
	}, flags...)
}

// RunChromium runs headless Chromium bin on url with the extra flags
// (--dump-dom, --screenshot=…: a run that ends by itself) and returns its
// standard output; it fails t when Chromium fails or runs longer than 90 s.
func RunChromium(t testing.TB, bin, url string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(chromiumArgs(t, flags), url)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr SyncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testenv: chromium %s failed: %v; stderr:\n%s", strings.Join(flags, " "), err, LastLines(stderr.String(), 30))
	}
	return stdout.String()
}

// StartChromium starts headless Chromium bin on url with the extra flags,
// for a page that keeps running until the test has what it waits for
// (the page reports to the test, say). Chromium is killed when t ends,
// or by the returned stop; output returns what it wrote to its standard
// error so far, for a failing test's message.
func StartChromium(t testing.TB, bin, url string, flags ...string) (stop func(), output func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append(chromiumArgs(t, flags), url)...)
	cmd.WaitDelay = 5 * time.Second
	var stderr SyncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("testenv: cannot start chromium: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop, func() string { return LastLines(stderr.String(), 30) }
}

// LastLines returns the last n lines of s.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
