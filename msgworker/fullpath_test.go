package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestFullPath runs the delivery path end to end with real parts: a Worker,
// the pushserver binary, and a device and a client speaking MQTT (paho).
// The device answers the first command and ignores the second, so the
// client gets the device's result for one and a timeout for the other,
// each over MQTT with its own id.
func TestFullPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const secret = "full-path-test-secret-of-32-bytes"
	h.worker(nil)
	addr := startPushServer(t, h.ns, secret)

	// The device answers every command except "ignore".
	device := mqttConnect(t, addr, "lamp-1", mint(t, secret, "lamp-1", auth.RoleDevice))
	var devMu sync.Mutex
	var devGot []string
	tok := device.Subscribe(protocol.DeviceCommandsTopic("lamp-1"), 1, func(c mqtt.Client, m mqtt.Message) {
		var req protocol.Request
		if err := json.Unmarshal(m.Payload(), &req); err != nil {
			t.Errorf("device got a bad request %s: %v", m.Payload(), err)
			return
		}
		devMu.Lock()
		devGot = append(devGot, req.ID.Key())
		devMu.Unlock()
		if req.Method == "ignore" {
			return
		}
		id, _ := json.Marshal(req.ID)
		resp := `{"jsonrpc":"2.0","result":{"done":"` + req.Method + `"},"id":` + string(id) + `}`
		go c.Publish(protocol.DeviceResponsesTopic("lamp-1"), 1, false, resp)
	})
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())

	client := mqttConnect(t, addr, "app-1", mint(t, secret, "app-1", auth.RoleClient, "lamp-*"))
	results := make(chan mqtt.Message, 16)
	tok = client.Subscribe(protocol.ClientResultsFilter("app-1"), 1, func(_ mqtt.Client, m mqtt.Message) { results <- m })
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())

	answered := h.send(spec{client: "app-1", device: "lamp-1", id: `42`, method: "reboot"})
	ignored := h.send(spec{client: "app-1", device: "lamp-1", id: `"q-1"`, method: "ignore", timeout: time.Second})

	got := map[string]*protocol.Response{}
	deadline := time.After(20 * time.Second)
	for len(got) < 2 {
		select {
		case m := <-results:
			require.Equal(t, protocol.ClientResultsTopic("app-1", "lamp-1"), m.Topic())
			r, err := protocol.ParseResponse(m.Payload())
			require.NoError(t, err, "%s", m.Payload())
			got[string(r.ID)] = r // duplicates are allowed over MQTT; dedupe by id
		case <-deadline:
			t.Fatalf("client got %d of 2 results", len(got))
		}
	}
	require.JSONEq(t, `{"done":"reboot"}`, string(got[`42`].Result))
	require.Equal(t, protocol.CodeTimeout, gatewayCode(t, got[`"q-1"`]))
	require.Equal(t, protocol.StatusSucceeded, h.get(answered).Status)
	c := h.get(ignored)
	require.Equal(t, protocol.StatusTimeout, c.Status)
	require.False(t, c.DeliveredAt.IsZero(), "PUBACK seen by the push server")
	devMu.Lock()
	require.ElementsMatch(t, []string{"app-1:42", "app-1:q-1"}, devGot)
	devMu.Unlock()
}

func mint(t testing.TB, secret, identity string, role auth.Role, devices ...string) string {
	tok, err := auth.Mint([]byte(secret), identity, role, devices, time.Hour)
	require.NoError(t, err)
	return tok
}

func mqttConnect(t testing.TB, addr, identity, token string) mqtt.Client {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(identity).SetUsername(identity).SetPassword(token).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect %s", identity)
	require.NoError(t, tok.Error(), "connect %s", identity)
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// startPushServer builds and starts the pushserver binary on a free port
// and returns its MQTT address once it listens.
func startPushServer(t testing.TB, ns, secret string) string {
	t.Helper()
	if _, err := os.Stat("../pushserver/main.go"); err != nil {
		t.Skip("pushserver not present")
	}
	psBin := buildBinary(t, "../pushserver")
	p := &process{cmd: exec.Command(psBin), out: &testenv.SyncBuffer{}}
	p.cmd.Env = append(os.Environ(),
		"GW_NAMESPACE="+ns,
		"GW_AMQP_URL="+testenv.AMQPURL(),
		"GW_REDIS_URL="+testenv.RedisURL(),
		"GW_AUTH_SECRET="+secret,
		"GW_MQTT_ADDR=127.0.0.1:0",
		"GW_NODE_ID=ps-"+ns,
		"GW_METRICS_ADDR=127.0.0.1:0",
		"GW_LOG_LEVEL=info",
		"GW_LOG_FORMAT=json",
	)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("output of pushserver:\n%s", p.out.String())
		}
	})
	var addr string
	require.Eventually(t, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "push server listening" {
				addr = rec.Addr
				return true
			}
		}
		return p.cmd.ProcessState != nil
	}, 20*time.Second, 20*time.Millisecond, "pushserver never listened:\n%s", p.out.String())
	require.NotEmpty(t, addr, "pushserver exited:\n%s", p.out.String())
	return addr
}
