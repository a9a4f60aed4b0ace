package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

func TestHealthReadyMetricsOpenAPI(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	r := g.do(http.MethodGet, "/healthz", "", nil)
	assert.Equal(t, http.StatusOK, r.Status)
	r = g.do(http.MethodGet, "/readyz", "", nil)
	assert.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	// The test Redis may not be durable: relaxed says why then.
	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	require.NoError(t, json.Unmarshal(r.Body, &ready))
	assert.Equal(t, "ready", ready.Status)
	assert.Equal(t, "ok", ready.Checks["rabbitmq"])
	assert.Equal(t, "ok", ready.Checks["redis"])
	durability := ready.Checks["durability"]
	if durability != "relaxed (GW_DURABILITY=relaxed)" && !strings.HasPrefix(durability, "relaxed (GW_DURABILITY=relaxed): Redis is not durable (appendonly is ") {
		t.Errorf("durability = %q, want relaxed, and why Redis is not durable when it is not", durability)
	}

	r = g.do(http.MethodGet, "/openapi.yaml", "", nil)
	require.Equal(t, http.StatusOK, r.Status)
	assert.Equal(t, openapiYAML, r.Body)
	assert.Equal(t, "application/yaml", r.Header.Get("Content-Type"))

	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd(1, "m", nil)).Status)
	require.Equal(t, http.StatusNotFound, g.do(http.MethodGet, "/v1/commands/2", tok, nil).Status)
	for _, p := range []string{"/v1/nothing/1", "/v1/nothing/2", "/favicon.ico"} {
		resp, err := http.Get(g.ts.URL + p)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	}
	g.drain()
	r = g.do(http.MethodGet, "/metrics", "", nil)
	require.Equal(t, http.StatusOK, r.Status)
	m := string(r.Body)
	for _, want := range []string{
		`gw_api_requests_total{code="202",route="/v1/devices/:device_id/commands"} 1`,
		`gw_api_requests_total{code="404",route="/v1/commands/:id"} 1`,
		`gw_api_requests_total{code="404",route="unmatched"} 3`,
		`gw_api_request_duration_seconds_bucket{route="/v1/devices/:device_id/commands",le="+Inf"} 1`,
		`gw_api_commands_accepted_total 1`,
		`gw_api_publish_failures_total{reason="returned"} 0`,
		`go_goroutines`,
		// The running build (internal/buildinfo).
		`gw_build_info{commit="`,
	} {
		assert.Contains(t, m, want)
	}
}

// The request log carries client_id, msg_id, status and latency.
func TestRequestLog(t *testing.T) {
	t.Parallel()
	var buf testenv.SyncBuffer
	g := newGW(t, func(_ *Config, d *Deps) { d.Logger = newJSONLogger(&buf) })
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd("log-1", "m", nil)).Status)
	g.drain()
	var found bool
	for _, line := range buf.Lines() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		if rec["msg"] != "request" {
			continue
		}
		found = true
		assert.Equal(t, "app-1", rec["client_id"])
		assert.Equal(t, "log-1", rec["msg_id"])
		assert.Equal(t, float64(202), rec["status"])
		assert.Equal(t, "/v1/devices/:device_id/commands", rec["route"])
		assert.Contains(t, rec, "latency")
	}
	assert.True(t, found, "no request log line in %q", buf.String())

	// Probes are logged at DEBUG, not INFO.
	before0 := len(buf.String())
	require.Equal(t, http.StatusOK, g.do(http.MethodGet, "/healthz", "", nil).Status)
	probe := buf.String()[before0:]
	assert.Contains(t, probe, `"route":"/healthz"`)
	assert.Contains(t, probe, `"level":"DEBUG"`, "the health probe's log line: %s", probe)

	// A 60 KB path (an outsider's) is clipped in the log line.
	before := len(buf.String())
	long := "/v1/" + strings.Repeat("x", 60<<10)
	resp, err := http.Get(g.ts.URL + long) // not through g.do: no route of the document
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	logged := buf.String()[before:]
	assert.Contains(t, logged, "more bytes)", "the path is clipped")
	assert.Less(t, len(logged), 4<<10, "one request wrote %d bytes of log", len(logged))
}

// run serves HTTPS with GW_TLS_CERT/GW_TLS_KEY, logs the bound address,
// accepts a command, and shuts down when its context ends.
func TestRunTLS(t *testing.T) {
	t.Parallel()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	conn := testenv.AMQP(t)
	certFile, keyFile, pool := testenv.SelfSignedCert(t)
	env := map[string]string{
		"GW_AUTH_SECRET":     testSecret,
		"GW_NAMESPACE":       ns,
		"GW_HTTP_ADDR":       "127.0.0.1:0",
		"GW_AMQP_URL":        testenv.AMQPURL(),
		"GW_REDIS_URL":       testenv.RedisURL(),
		"GW_TLS_CERT":        certFile,
		"GW_TLS_KEY":         keyFile,
		"GW_CONFIRM_TIMEOUT": "3s",
		"GW_DURABILITY":      "relaxed", // the test Redis is not durable
	}
	var out testenv.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--log-format", "json"}, func(k string) string { return env[k] }, &out)
	}()

	addr := waitListening(t, &out, done)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + addr
	require.Eventually(t, func() bool {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond, "not ready")
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := doURL(t, client, base, http.MethodPost, "/v1/devices/dev-1/commands", tok, cmd("tls-1", "m", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)

	// Plain HTTP is not served.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err == nil {
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		resp.Body.Close()
	}

	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	topo := protocol.NewTopology(ns, protocol.DefaultQueues, protocol.DefaultPartitions)
	d, ok, err := ch.Get(topo.CommandQueue(topo.CommandQueueOf("dev-1", topo.PartitionCount)), true)
	require.NoError(t, err)
	require.True(t, ok, "the command is in the queue")
	assert.Contains(t, string(d.Body), `"msg_id":"tls-1"`)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	assert.Contains(t, out.String(), `"msg":"stopped"`)
	testenv.RequireLogSchema(t, "apiserver", out.Lines())
}

func TestRunRefusesWithoutSecret(t *testing.T) {
	t.Parallel()
	var out testenv.SyncBuffer
	err := run(context.Background(), nil, func(string) string { return "" }, &out)
	require.ErrorIs(t, err, ErrNoSecret)
	assert.Contains(t, err.Error(), "GW_AUTH_SECRET")

	err = run(context.Background(), []string{"--no-such-flag"}, func(k string) string {
		return map[string]string{"GW_AUTH_SECRET": testSecret}[k]
	}, &out)
	require.Error(t, err)
	err = run(context.Background(), nil, func(k string) string {
		return map[string]string{"GW_AUTH_SECRET": testSecret, "GW_CONFIRM_TIMEOUT": "soon"}[k]
	}, &out)
	require.ErrorContains(t, err, "GW_CONFIRM_TIMEOUT")
	err = run(context.Background(), nil, func(k string) string {
		return map[string]string{"GW_AUTH_SECRET": testSecret, "GW_TLS_CERT": "c.pem"}[k]
	}, &out)
	require.ErrorContains(t, err, "GW_TLS_KEY")
}

// The counts are checked, and those of the namespace's fence win: run
// refuses to start with other ones, naming both.
func TestRunCounts(t *testing.T) {
	for _, tt := range []struct{ name, queues, partitions, want string }{
		{"partitions not a power of two", "4", "100", "partitions"},
		{"no queue", "0", "256", "queues"},
		{"too many queues", "257", "256", "queues"},
	} {
		c, err := parseConfig(nil, func(k string) string {
			return map[string]string{"GW_AUTH_SECRET": testSecret, "GW_QUEUES": tt.queues, "GW_PARTITIONS": tt.partitions}[k]
		}, &bytes.Buffer{})
		if err == nil {
			err = c.validate()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: GW_QUEUES=%s GW_PARTITIONS=%s: %v, want an error about %s", tt.name, tt.queues, tt.partitions, err, tt.want)
		}
	}

	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	ch, err := testenv.AMQP(t).Channel()
	require.NoError(t, err)
	require.NoError(t, amqpx.Declare(ch, protocol.NewTopology(ns, 4, 256)))
	ch.Close()
	var out testenv.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, nil, func(k string) string {
		return map[string]string{
			"GW_AUTH_SECRET": testSecret, "GW_NAMESPACE": ns, "GW_HTTP_ADDR": "127.0.0.1:0",
			"GW_AMQP_URL": testenv.AMQPURL(), "GW_REDIS_URL": testenv.RedisURL(),
			"GW_QUEUES": "8", "GW_PARTITIONS": "256",
		}[k]
	}, &out)
	require.ErrorIs(t, err, amqpx.ErrCounts)
	assert.ErrorContains(t, err, "GW_QUEUES=4 and GW_PARTITIONS=256")
	assert.ErrorContains(t, err, "GW_QUEUES=8 and GW_PARTITIONS=256")
	assert.NotContains(t, out.String(), `"msg":"listening"`)

	// Redis is fenced too: a namespace whose partitions recorded 16
	// refuses a process started with 256, although RabbitMQ lets it in.
	ns = testenv.Namespace(t)
	store := mailbox.New(testenv.Redis(t), ns, mailbox.Options{Partitions: 16})
	require.NoError(t, store.CheckCounts(ctx, 4, true))
	out = testenv.SyncBuffer{}
	err = run(ctx, nil, func(k string) string {
		return map[string]string{
			"GW_AUTH_SECRET": testSecret, "GW_NAMESPACE": ns, "GW_HTTP_ADDR": "127.0.0.1:0",
			"GW_AMQP_URL": testenv.AMQPURL(), "GW_REDIS_URL": testenv.RedisURL(),
			"GW_QUEUES": "4", "GW_PARTITIONS": "256",
		}[k]
	}, &out)
	require.ErrorIs(t, err, mailbox.ErrCounts)
	assert.ErrorContains(t, err, "records partitions=16")
	assert.NotContains(t, out.String(), `"msg":"listening"`)
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{
		"GW_AUTH_SECRET": testSecret, "GW_BODY_LIMIT": "1MiB", "GW_RATE": "10", "GW_BURST": "20",
		"GW_CONFIRM_TIMEOUT": "7", "GW_RETENTION": "1h", "GW_HTTP_ADDR": "127.0.0.1:0",
		"GW_QUEUES": "8", "GW_PARTITIONS": "64",
	}
	c, err := parseConfig([]string{"--burst", "30", "--namespace", "x", "--partitions", "1024"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	require.NoError(t, err)
	require.NoError(t, c.validate())
	assert.Equal(t, 8, c.Queues)
	assert.Equal(t, 1024, c.Partitions, "a flag wins over the variable")
	assert.Equal(t, protocol.NewTopology("x", 8, 1024), c.topology())
	assert.Equal(t, int64(1<<20), c.BodyLimit)
	assert.Equal(t, 10.0, c.Rate)
	assert.Equal(t, 30, c.Burst, "a flag wins over the variable")
	assert.Equal(t, 7*time.Second, c.ConfirmTimeout)
	assert.Equal(t, time.Hour, c.Retention)
	assert.Equal(t, "x", c.Namespace)
	assert.Equal(t, testSecret, c.AuthSecret)
	assert.Equal(t, "amqp://guest:guest@127.0.0.1:5672/", c.AMQPURL)
	assert.Equal(t, DefaultMaxWait, c.MaxWait)
	assert.Equal(t, DefaultShutdownTimeout, c.ShutdownTimeout)
}

// Serve shuts down gracefully: a waiting long-poll answers at once with
// the current status, and Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd("gs", "m", nil)).Status)
	g.drain()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- g.srv.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()

	poll := make(chan *reply, 1)
	go func() {
		poll <- doURL(t, http.DefaultClient, base, http.MethodGet, "/v1/commands/gs?wait=30s", tok, nil)
	}()
	waitPolling(t, g.srv, "app-1", 1)
	start := time.Now()
	cancel()
	select {
	case r := <-poll:
		assert.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		assert.Contains(t, string(r.Body), `"status":"queued"`)
	case <-time.After(5 * time.Second):
		t.Fatal("the long-poll did not end at shutdown")
	}
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-time.After(11 * time.Second):
		t.Fatal("Serve did not return")
	}
	assert.Less(t, time.Since(start), 5*time.Second)
	_, err = http.Get(base + "/healthz")
	assert.Error(t, err, "no longer accepting")
}

// A long-poll may outlast the server's write timeout: it extends its own
// write deadline.
func TestLongPollOutlastsWriteTimeout(t *testing.T) {
	t.Parallel()
	g := newGW(t, func(c *Config, _ *Deps) { c.WriteTimeout = 300 * time.Millisecond })
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd("wt", "m", nil)).Status)
	g.drain()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()
	r := doURL(t, http.DefaultClient, "http://"+ln.Addr().String(), http.MethodGet, "/v1/commands/wt?wait=1s", tok, nil)
	assert.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
}

// requestTraceParent is the traceparent a request with header h passes
// on with tracing off, as observe makes it.
func requestTraceParent(h string) string {
	ctx := telemetry.ContextWithTraceParent(context.Background(), h)
	ctx, span := telemetry.Tracer().Start(ctx, "request")
	defer span.End()
	return telemetry.TraceParent(telemetry.EnsureTrace(ctx))
}

// FuzzTraceParent: whatever the header, the envelope gets a valid
// traceparent, and a valid one keeps its trace and parent IDs.
func FuzzTraceParent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("")
	f.Add("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")
	f.Fuzz(func(t *testing.T, h string) {
		got := requestTraceParent(h)
		if !validTraceParent(got) {
			t.Fatalf("requestTraceParent(%q) = %q, not valid", h, got)
		}
		if validTraceParent(h) && got[:52] != h[:52] {
			t.Fatalf("requestTraceParent(%q) = %q, want its trace and parent IDs unchanged", h, got)
		}
	})
}

// A request's traceparent header, when valid, is the parent of the
// request's spans (with tracing off, the no-op spans carry it unchanged
// into the envelope); without a valid one the request gets a new trace.
func TestTraceParent(t *testing.T) {
	for _, tc := range []struct {
		in    string
		valid bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false},
		{"", false},
	} {
		assert.Equal(t, tc.valid, validTraceParent(tc.in), "validTraceParent(%q)", tc.in)
		got := requestTraceParent(tc.in)
		assert.True(t, validTraceParent(got), "traceparent of a request with %q = %q", tc.in, got)
		if tc.valid {
			assert.Equal(t, tc.in, got)
		}
	}
}

// validTraceParent checks version 00's layout: 00-<32 hex>-<16 hex>-<2
// hex>, lowercase, with trace and parent IDs that are not all zeros.
func validTraceParent(h string) bool {
	if len(h) != 55 || h[:3] != "00-" || h[35] != '-' || h[52] != '-' {
		return false
	}
	hexOK := func(s string, nonZero bool) bool {
		zero := true
		for i := 0; i < len(s); i++ {
			c := s[i]
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
			if s[i] != '0' {
				zero = false
			}
		}
		return !nonZero || !zero
	}
	return hexOK(h[3:35], true) && hexOK(h[36:52], true) && hexOK(h[53:], false)
}

// waitListening reads run's log until the "listening" line and returns
// its address.
func waitListening(t *testing.T, out *testenv.SyncBuffer, done <-chan error) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range out.Lines() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				return rec.Addr
			}
		}
		select {
		case err := <-done:
			t.Fatalf("run returned before listening: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no listening line in %s", out.String())
	return ""
}

// newJSONLogger logs JSON to w at debug level.
func newJSONLogger(w *testenv.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// With strict durability (the default), /readyz refuses a Redis that keeps
// writes neither on disk at once nor on replicas, and says why; relaxed
// stays ready (TestHealthReadyMetricsOpenAPI).
func TestReadyzDurability(t *testing.T) {
	t.Parallel()
	if err := mailbox.CheckDurable(context.Background(), testenv.Redis(t), 0); err == nil {
		t.Skip("the test Redis is durable")
	}
	tests := []struct {
		name         string
		waitReplicas int
		want         []string
	}{
		{"no barrier", 0, []string{"appendfsync", "GW_DURABILITY=relaxed"}},
		{"more replicas than connected", 1, []string{"replicas connected", "GW_REDIS_WAIT_REPLICAS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGW(t, func(c *Config, _ *Deps) {
				c.Durability = config.DurabilityStrict
				c.WaitReplicas = tt.waitReplicas
			})
			r := g.do(http.MethodGet, "/readyz", "", nil)
			assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
			var body struct {
				Status string            `json:"status"`
				Checks map[string]string `json:"checks"`
			}
			require.NoError(t, json.Unmarshal(r.Body, &body))
			assert.Equal(t, "not ready", body.Status)
			assert.Equal(t, "ok", body.Checks["redis"])
			for _, w := range tt.want {
				assert.Contains(t, body.Checks["durability"], w)
			}
		})
	}
}
