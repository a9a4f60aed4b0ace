package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// mqttjsDir holds the MQTT.js test device and its npm packages, which
// deployments/local/services.sh installs (make test runs it first).
const mqttjsDir = "testdata/mqttjs"

// mqttjsInstall is the command that installs the npm packages, from the
// repository's root.
const mqttjsInstall = "npm ci --no-audit --no-fund --prefix pushserver/testdata/mqttjs (or bash deployments/local/services.sh)"

// nodeJS returns the node binary, failing the test with what to install
// when node or the npm packages are missing (the test installs nothing).
func nodeJS(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not in PATH: install Node.js 18 or later and npm, then run %s", mqttjsInstall)
	}
	if _, err := os.Stat(filepath.Join(mqttjsDir, "node_modules", "mqtt", "package.json")); err != nil {
		t.Fatalf("the npm package mqtt is not installed in pushserver/%s: run %s", mqttjsDir, mqttjsInstall)
	}
	return node
}

// runMQTTJS runs device.mjs with MQTT version version and returns the
// JSON lines it printed, failing the test when it does not exit 0.
func runMQTTJS(t *testing.T, node, url, identity, mode string, version int) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "device.mjs", url, identity, mode)
	cmd.Dir = mqttjsDir
	cmd.Env = append(os.Environ(),
		"MQTTJS_TOKEN="+token(t, identity, auth.RoleDevice, time.Hour),
		"MQTTJS_VERSION="+map[int]string{4: "4", 5: "5"}[version])
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, err, "node device.mjs %s %s %s: stdout %s stderr %s", url, identity, mode, stdout.String(), stderr.String())
	var lines []map[string]any
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "line %q", sc.Text())
		lines = append(lines, m)
	}
	return lines
}

// TestMQTTJS: MQTT.js, the browsers' MQTT library, run by Node over
// WebSocket: a device gets a command and answers it (MQTT 5 and 3.1.1),
// and a node that does not own the device refuses it with the owner as
// server reference.
func TestMQTTJS(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Parallel()
	node := nodeJS(t)
	e := newEnv(t)
	ws := func(c *Config) { c.WSAddr = "127.0.0.1:0" }
	a, b := e.startNode(ws), e.startNode(ws)
	members := e.converged(a, b)
	devices := identitiesOwnedBy(members, a.NodeID(), "dev-mqttjs", 2)
	const client = "cli-mqttjs"

	for i, version := range []int{5, 4} {
		device := devices[i]
		raw := []string{`"js-5"`, `"js-4"`}[i]
		cmd := e.sendCommand(client, device, raw, a.NodeID())
		lines := runMQTTJS(t, node, "ws://"+a.WSAddr()+"/mqtt", device, "answer", version)
		// connack first; subscribed (the SUBACK) and the command may come
		// in either order (MQTT lets the server send before the SUBACK).
		require.Len(t, lines, 4, "MQTT %d: %v", version, lines)
		steps := map[string]any{}
		for _, l := range lines {
			for k, v := range l {
				steps[k] = v
			}
		}
		require.Contains(t, lines[0], "connack", "MQTT %d: %v", version, lines)
		require.EqualValues(t, 0, steps["connack"], "MQTT %d: %v", version, lines)
		require.EqualValues(t, 1, steps["subscribed"], "MQTT %d: %v", version, lines)
		require.Equal(t, client+":"+cmd.ID.Key(), steps["answered"], "MQTT %d: %v", version, lines)
		got := e.commandStatus(client, cmd.ID.Key())
		require.Equal(t, protocol.StatusSucceeded, got.Status, "MQTT %d", version)
		require.Contains(t, string(got.Response), `"from":"mqtt.js"`)
	}

	lines := runMQTTJS(t, node, "ws://"+b.WSAddr()+"/mqtt", devices[0], "refused", 5)
	require.NotEmpty(t, lines)
	require.EqualValues(t, 0x9C, lines[0]["connack"])
	require.Equal(t, a.URL(), lines[0]["serverReference"])
}
