// Package examples holds the test that runs every example of this folder
// against a gateway it starts (the real binaries on RabbitMQ and Redis), so
// that the examples cannot rot: each client (curl and mosquitto_sub,
// Python, Go) sends commands to each device (Python, Go).
package examples

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/testenv"
)

// TestExamples starts a gateway, the Go and the Python device, and runs
// every client example against each device: an "echo" must come back as
// the result with the command's id, an unknown method as the device's
// -32601 error (exit status 2).
func TestExamples(t *testing.T) {
	testenv.RequireServices(t)
	root, err := gwproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	python := requirePython(t)
	requireTool(t, "mosquitto_sub", "apt-get install -y mosquitto-clients")
	requireTool(t, "curl", "apt-get install -y curl")

	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	if err := gwproc.Build(ctx, bin, false); err != nil {
		t.Fatal(err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./examples/go/client", "./examples/go/device")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cannot build the Go examples: %v\n%s", err, out)
	}

	ns := testenv.Namespace(t)
	g, err := gwproc.Start(ctx, gwproc.Options{
		BinDir: bin, RunDir: filepath.Join(t.TempDir(), "run"), Namespace: ns, Secret: "examples-" + ns,
		AMQPURL: testenv.AMQPURL(), RedisURL: testenv.RedisURL(), Workers: 1, PushServers: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("gateway logs:\n%s", g.Logs(3000))
		}
	})
	token := func(role, sub string, devices ...string) string {
		tok, err := g.Token(role, sub, devices)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	devices := []struct {
		id   string
		argv []string
	}{
		{"dev-go", []string{filepath.Join(bin, "device")}},
		{"dev-py", []string{python, filepath.Join(root, "examples/python/device.py")}},
	}
	for _, d := range devices {
		startDevice(t, d.argv, []string{"GW_API_URL=" + g.APIURL, "GW_DEVICE=" + d.id, "GW_TOKEN=" + token("device", d.id)})
	}

	clients := []struct {
		name string
		argv func(method, params string) []string
	}{
		{"curl", func(m, p string) []string {
			return []string{"bash", filepath.Join(root, "examples/curl/send.sh"), m, p}
		}},
		{"python", func(m, p string) []string {
			return []string{python, filepath.Join(root, "examples/python/client.py"), m, p}
		}},
		{"go", func(m, p string) []string {
			return []string{filepath.Join(bin, "client"), "--method", m, "--params", p}
		}},
	}
	for _, c := range clients {
		for _, d := range devices {
			t.Run(c.name+"/"+d.id, func(t *testing.T) {
				env := []string{"GW_API_URL=" + g.APIURL, "GW_CLIENT=app-" + c.name, "GW_DEVICE=" + d.id,
					"GW_TOKEN=" + token("client", "app-"+c.name, "dev-*")}

				params := fmt.Sprintf(`{"from":%q,"n":42}`, c.name)
				out, code := runClient(t, c.argv("echo", params), env)
				t.Logf("echo: %s", strings.TrimSpace(out))
				res := parseResult(t, out)
				if code != 0 || !sameJSON(res.Result, params) {
					t.Errorf("echo: exit %d, result %s; want exit 0, result %s\noutput:\n%s", code, res.Result, params, out)
				}

				out, code = runClient(t, c.argv("no-such-method", "{}"), env)
				res = parseResult(t, out)
				if code != 2 || res.Error == nil || res.Error.Code != -32601 {
					t.Errorf("unknown method: exit %d, error %+v; want exit 2, the device's error -32601\noutput:\n%s", code, res.Error, out)
				}
			})
		}
	}
}

// result is the JSON-RPC response a client example prints.
type result struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code int `json:"code"`
	} `json:"error"`
}

// parseResult finds the JSON-RPC response in a client's stdout (its last
// line) and checks that it carries an id.
func parseResult(t *testing.T, out string) result {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var r result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil || len(r.ID) == 0 {
		t.Errorf("last line of stdout is not a JSON-RPC response with an id (%v):\n%s", err, out)
	}
	return r
}

// sameJSON reports whether got and want are the same JSON value.
func sameJSON(got json.RawMessage, want string) bool {
	var g, w any
	return json.Unmarshal(got, &g) == nil && json.Unmarshal([]byte(want), &w) == nil && reflect.DeepEqual(g, w)
}

// runClient runs one client example to its end (at most a minute) and
// returns its stdout (with its stderr after it, for messages) and its exit
// status.
func runClient(t *testing.T, argv, env []string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), 0
	case errors.As(err, &exit) && ctx.Err() == nil:
		t.Logf("%v exited %d; stderr:\n%s", argv, exit.ExitCode(), stderr.String())
		return stdout.String(), exit.ExitCode()
	}
	t.Fatalf("%v: %v\nstdout:\n%s\nstderr:\n%s", argv, err, stdout.String(), stderr.String())
	return "", 0
}

// startDevice starts a device example and waits for its "ready" line (it
// has subscribed to its commands). It is stopped when t ends.
func startDevice(t *testing.T, argv, env []string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stderr := &testenv.SyncBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start %v: %v", argv, err)
	}
	ready := make(chan struct{})
	var lines sync.WaitGroup
	lines.Add(1)
	go func() {
		defer lines.Done()
		sc := bufio.NewScanner(stdout)
		once := sync.OnceFunc(func() { close(ready) })
		for sc.Scan() {
			if sc.Text() == "ready" {
				once()
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		lines.Wait()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%v stderr:\n%s", argv, stderr.String())
		}
	})
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("%v printed no \"ready\" within 30s; stderr:\n%s", argv, stderr.String())
	}
}

// requirePython returns a python3 that has paho-mqtt: $GW_PYTHON, python3
// in PATH, or Debian's /usr/bin/python3 (where python3-paho-mqtt installs
// it). It fails t, naming the install command, when none has it.
func requirePython(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, py := range []string{os.Getenv("GW_PYTHON"), "python3", "/usr/bin/python3"} {
		if py == "" {
			continue
		}
		path, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		tried = append(tried, path)
		if exec.Command(path, "-c", "import paho.mqtt.client").Run() == nil {
			return path
		}
	}
	t.Fatalf("no python3 with paho-mqtt (tried %v); install it: apt-get install -y python3-paho-mqtt "+
		"(deployments/local/services.sh does), or pip install paho-mqtt and set GW_PYTHON", tried)
	return ""
}

// requireTool fails t when name is not in PATH, naming the install command.
func requireTool(t *testing.T, name, install string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found; install it: %s (deployments/local/services.sh does)", name, install)
	}
}
