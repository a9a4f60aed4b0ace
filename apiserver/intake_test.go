package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

func TestPostAcceptedLeavesOneDurableMessage(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	before := time.Now().Truncate(time.Millisecond)
	r := g.do(http.MethodPost, "/v1/devices/dev-1/commands?timeout=45s&expires_in=120", tok,
		cmd("cmd-1", "reboot", map[string]any{"delay": 5}), "traceparent", trace)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	var acc acceptedBody
	r.json(t, &acc)
	assert.JSONEq(t, `"cmd-1"`, string(acc.ID))
	assert.Equal(t, protocol.StatusQueued, acc.Status)
	assert.Equal(t, "/v1/commands/cmd-1", acc.StatusURL)

	msgs := g.drain()
	require.Len(t, msgs, 1, "exactly one message in %s.*", g.topo.CommandsGroup)
	m := msgs[0]
	assert.Equal(t, uint8(amqp.Persistent), m.DeliveryMode, "persistent")
	assert.Equal(t, trace, m.Headers["traceparent"])
	env, err := protocol.DecodeEnvelope(m.Body)
	require.NoError(t, err)
	assert.Equal(t, protocol.KindCommand, env.Kind)
	assert.Equal(t, "app-1", env.Client)
	assert.Equal(t, "dev-1", env.Device)
	assert.Equal(t, "cmd-1", env.MsgID.Key())
	assert.JSONEq(t, `{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"cmd-1"}`, string(env.Payload))
	assert.Equal(t, 1, env.Attempt)
	assert.Equal(t, int64(45000), env.AnswerWithinMS)
	assert.Equal(t, trace, env.TraceParent)
	assert.False(t, env.AcceptedAt.Before(before), "accepted_at %v before %v", env.AcceptedAt, before)
	assert.Equal(t, env.AcceptedAt.Add(120*time.Second), env.DeliverBy)

	rec, err := g.store.Get(context.Background(), "app-1", "cmd-1")
	require.NoError(t, err)
	assert.Equal(t, protocol.StatusQueued, rec.Status)
	assert.False(t, rec.QueuedAt.IsZero())

	// Without a traceparent a new one is made.
	r = g.post(tok, "dev-1", cmd(7, "ping", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	envs := g.envelopes()
	require.Len(t, envs, 1)
	assert.True(t, validTraceParent(envs[0].TraceParent), "traceparent %q", envs[0].TraceParent)
	assert.Equal(t, int64(30000), envs[0].AnswerWithinMS, "default timeout")
	assert.Equal(t, envs[0].AcceptedAt.Add(time.Hour), envs[0].DeliverBy, "default expires_in")
}

func TestPostErrors(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ok := cmd("x1", "reboot", nil)
	for _, tc := range []struct {
		name   string
		device string
		query  string
		body   any
		status int
		code   int
	}{
		{"not JSON", "dev-1", "", `{"jsonrpc":`, 400, protocol.CodeParseError},
		{"empty body", "dev-1", "", ``, 400, protocol.CodeParseError},
		{"a string", "dev-1", "", `"hello"`, 400, protocol.CodeInvalidRequest},
		{"no id", "dev-1", "", `{"jsonrpc":"2.0","method":"reboot"}`, 400, protocol.CodeInvalidRequest},
		{"null id", "dev-1", "", `{"jsonrpc":"2.0","method":"reboot","id":null}`, 400, protocol.CodeInvalidRequest},
		{"fraction id", "dev-1", "", `{"jsonrpc":"2.0","method":"reboot","id":1.5}`, 400, protocol.CodeInvalidRequest},
		{"long id", "dev-1", "", cmd(strings.Repeat("a", 129), "m", nil), 400, protocol.CodeInvalidRequest},
		{"wrong version", "dev-1", "", `{"jsonrpc":"1.0","method":"reboot","id":1}`, 400, protocol.CodeInvalidRequest},
		{"params scalar", "dev-1", "", `{"jsonrpc":"2.0","method":"reboot","params":3,"id":1}`, 400, protocol.CodeInvalidRequest},
		{"bad device", "-dev", "", ok, 400, protocol.CodeInvalidRequest},
		{"timeout too short", "dev-1", "timeout=0", ok, 400, protocol.CodeInvalidRequest},
		{"timeout too long", "dev-1", "timeout=25h", ok, 400, protocol.CodeInvalidRequest},
		{"timeout garbage", "dev-1", "timeout=soon", ok, 400, protocol.CodeInvalidRequest},
		{"timeout negative", "dev-1", "timeout=-5s", ok, 400, protocol.CodeInvalidRequest},
		{"expires_in too long", "dev-1", "expires_in=169h", ok, 400, protocol.CodeInvalidRequest},
		{"expires_in too short", "dev-1", "expires_in=500ms", ok, 400, protocol.CodeInvalidRequest},
		{"empty batch", "dev-1", "", `[]`, 400, protocol.CodeInvalidRequest},
		{"batch too large", "dev-1", "", batchOf(101), 400, protocol.CodeInvalidRequest},
		{"device outside globs", "pump-1", "", ok, 403, protocol.CodeForbidden},
		{"another client", "dev-1", "client=app-2", ok, 400, protocol.CodeInvalidRequest},
	} {
		path := "/v1/devices/" + tc.device + "/commands"
		if tc.query != "" {
			path += "?" + tc.query
		}
		r := g.do(http.MethodPost, path, tok, tc.body)
		assert.Equal(t, tc.status, r.Status, "%s: body %s", tc.name, r.Body)
		assert.Equal(t, tc.code, r.errorCode(t), "%s: body %s", tc.name, r.Body)
	}
	// Bounds are inclusive; seconds work too.
	r := g.post(tok, "dev-1", cmd("b1", "m", nil), "timeout=1", "expires_in=604800")
	assert.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	r = g.post(tok, "dev-1", cmd("b2", "m", nil), "timeout=24h", "expires_in=1s")
	assert.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Len(t, g.drain(), 2, "only the two valid commands were published")

	// Unknown routes and methods are JSON errors too (not in openapi.yaml).
	for _, tc := range []struct {
		method, path string
		status, code int
	}{
		{http.MethodGet, "/v1/nothing", 404, protocol.CodeNotFound},
		{http.MethodPut, "/v1/devices/dev-1/commands", 405, protocol.CodeInvalidRequest},
	} {
		req, err := http.NewRequest(tc.method, g.ts.URL+tc.path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r := &reply{Status: resp.StatusCode, Body: body}
		assert.Equal(t, tc.status, r.Status, "%s %s: %s", tc.method, tc.path, body)
		assert.Equal(t, tc.code, r.errorCode(t), "%s %s", tc.method, tc.path)
	}
}

func batchOf(n int) []map[string]any {
	b := make([]map[string]any, n)
	for i := range b {
		b[i] = cmd(i+1, "m", nil)
	}
	return b
}

// The examples of the JSON-RPC 2.0 specification (section 7), through the
// HTTP endpoint.
func TestJSONRPCSpecExamples(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	type entry struct {
		ID     json.RawMessage `json:"id"`
		Status string          `json:"status"`
		Error  *protocol.Error `json:"error"`
	}
	for _, tc := range []struct {
		name    string
		body    string
		status  int
		code    int      // for a single error object
		entries []string // per entry: "queued" or the error code
		publish int
	}{
		{name: "positional params", body: `{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}`, status: 202, publish: 1},
		{name: "named params", body: `{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}`, status: 202, publish: 1},
		{name: "notification", body: `{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}`, status: 400, code: protocol.CodeInvalidRequest},
		{name: "invalid JSON", body: `{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]`, status: 400, code: protocol.CodeParseError},
		{name: "invalid request object", body: `{"jsonrpc": "2.0", "method": 1, "params": "bar"}`, status: 400, code: protocol.CodeInvalidRequest},
		{name: "batch, invalid JSON", body: `[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]`, status: 400, code: protocol.CodeParseError},
		{name: "empty array", body: `[]`, status: 400, code: protocol.CodeInvalidRequest},
		{name: "invalid batch, not empty", body: `[1]`, status: 400, entries: []string{"-32600"}},
		{name: "invalid batch", body: `[1,2,3]`, status: 400, entries: []string{"-32600", "-32600", "-32600"}},
		{name: "mixed batch", body: `[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "b1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "b2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "b5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "b9"}
    ]`, status: 202, entries: []string{"queued", "-32600", "queued", "-32600", "queued", "queued"}, publish: 4},
		{name: "all notifications", body: `[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]`, status: 400, entries: []string{"-32600", "-32600"}},
		{name: "duplicate id in a batch", body: `[{"jsonrpc":"2.0","method":"a","id":"d1"},{"jsonrpc":"2.0","method":"b","id":"d1"}]`,
			status: 202, entries: []string{"queued", "-32600"}, publish: 1},
	} {
		r := g.post(tok, "dev-1", tc.body)
		require.Equal(t, tc.status, r.Status, "%s: %s", tc.name, r.Body)
		if tc.entries == nil {
			if tc.code != 0 {
				assert.Equal(t, tc.code, r.errorCode(t), "%s: %s", tc.name, r.Body)
			}
		} else {
			var got []entry
			r.json(t, &got)
			require.Len(t, got, len(tc.entries), "%s: %s", tc.name, r.Body)
			for i, want := range tc.entries {
				if want == "queued" {
					assert.Equal(t, "queued", got[i].Status, "%s: entry %d", tc.name, i)
					assert.Nil(t, got[i].Error, "%s: entry %d", tc.name, i)
				} else {
					require.NotNil(t, got[i].Error, "%s: entry %d", tc.name, i)
					assert.Equal(t, want, fmt.Sprint(got[i].Error.Code), "%s: entry %d", tc.name, i)
				}
			}
		}
		assert.Len(t, g.drain(), tc.publish, "%s: messages published", tc.name)
	}

	// An error entry names the request's id when it could be read.
	r := g.post(tok, "dev-1", `[{"jsonrpc":"2.0","method":"ok","id":"n1"},{"jsonrpc":"1.0","method":"x","id":"n2"}]`)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	var got []entry
	r.json(t, &got)
	assert.JSONEq(t, `"n2"`, string(got[1].ID))
	g.drain()
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	r := g.post(tok, "dev-1", cmd(42, "set", map[string]any{"a": 1, "b": 2}))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)

	// The same body, params reordered, the id as a string: the existing
	// command, 200, nothing published.
	r = g.post(tok, "dev-1", `{"id":"42","params":{"b":2,"a":1},"method":"set","jsonrpc":"2.0"}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v commandView
	r.json(t, &v)
	assert.Equal(t, protocol.StatusQueued, v.Status)
	assert.Equal(t, "set", v.Method)
	assert.JSONEq(t, `42`, string(v.ID), "the id as first written")

	// A different body with the same id: 409.
	for _, tc := range []struct {
		name, device string
		body         any
		query        string
	}{
		{"params", "dev-1", cmd(42, "set", map[string]any{"a": 2}), ""},
		{"method", "dev-1", cmd(42, "get", map[string]any{"a": 1, "b": 2}), ""},
		{"device", "dev-2", cmd(42, "set", map[string]any{"a": 1, "b": 2}), ""},
		{"timeout", "dev-1", cmd(42, "set", map[string]any{"a": 1, "b": 2}), "timeout=31s"},
		{"expires_in", "dev-1", cmd(42, "set", map[string]any{"a": 1, "b": 2}), "expires_in=2h"},
	} {
		var q []string
		if tc.query != "" {
			q = append(q, tc.query)
		}
		r := g.post(tok, tc.device, tc.body, q...)
		assert.Equal(t, http.StatusConflict, r.Status, "%s: %s", tc.name, r.Body)
		assert.Equal(t, protocol.CodeConflict, r.errorCode(t), "%s", tc.name)
	}
	// In a batch, the existing command and a conflict are entries.
	r = g.post(tok, "dev-1", []any{cmd(42, "set", map[string]any{"a": 1, "b": 2}), cmd(43, "x", nil), cmd(42.0, "x", nil)})
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	var entries []map[string]any
	r.json(t, &entries)
	require.Len(t, entries, 3)
	assert.Equal(t, "queued", entries[0]["status"])
	assert.Equal(t, "set", entries[0]["method"], "the existing command")
	assert.Equal(t, "queued", entries[1]["status"])
	assert.NotNil(t, entries[2]["error"], "42.0 is not an integer id")

	// Another client's id 42 is another command.
	r = g.post(token(t, "app-2", auth.RoleClient, "dev-*"), "dev-1", cmd(42, "other", nil))
	assert.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)

	assert.Len(t, g.drain(), 3, "42 once, 43, and app-2's 42")
}

func TestConcurrentDuplicatesPublishOnce(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	const n = 50
	statuses := make([]int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			statuses[i] = g.post(tok, "dev-1", cmd("dup-1", "reboot", map[string]any{"now": true})).Status
		}()
	}
	close(start)
	wg.Wait()
	count := map[int]int{}
	for _, s := range statuses {
		count[s]++
	}
	assert.Equal(t, 1, count[http.StatusAccepted], "statuses %v", count)
	assert.Equal(t, n-1, count[http.StatusOK], "statuses %v", count)
	assert.Len(t, g.drain(), 1, "exactly one message in the queue")
}

// A crash between reserve and publish: the record stays pending with a
// lease nobody will end. A retrying client's request waits for the lease
// and publishes (Retake); the command is not lost.
func TestRetakeAfterLostReservation(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ctx := context.Background()
	body := cmd("crash-1", "reboot", nil)
	fp := protocol.Fingerprint("dev-1", "reboot", nil, DefaultTimeout, DefaultExpiresIn)
	id, err := protocol.ParseIDKey("crash-1")
	require.NoError(t, err)

	// The "crashed" apiserver: a store with a short lease, which reserves
	// and then disappears.
	crashed := mailbox.New(g.rdb, g.ns, mailbox.Options{Lease: 700 * time.Millisecond})
	out, _, err := crashed.Reserve(ctx, &mailbox.Command{Client: "app-1", Device: "dev-1", ID: id, Method: "reboot",
		Fingerprint: fp, Timeout: DefaultTimeout, ExpiresIn: DefaultExpiresIn})
	require.NoError(t, err)
	require.Equal(t, mailbox.Reserved, out)

	// During the lease: the retry waits for it, then retakes and publishes.
	start := time.Now()
	r := g.post(tok, "dev-1", body)
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Greater(t, time.Since(start), 300*time.Millisecond, "waited for the lease")
	envs := g.envelopes()
	require.Len(t, envs, 1)
	assert.Equal(t, "crash-1", envs[0].MsgID.Key())

	// After the lease ran out: the retry publishes at once.
	id2, _ := protocol.ParseIDKey("crash-2")
	out, _, err = crashed.Reserve(ctx, &mailbox.Command{Client: "app-1", Device: "dev-1", ID: id2, Method: "reboot",
		Fingerprint: fp, Timeout: DefaultTimeout, ExpiresIn: DefaultExpiresIn})
	require.NoError(t, err)
	require.Equal(t, mailbox.Reserved, out)
	time.Sleep(800 * time.Millisecond)
	start = time.Now()
	r = g.post(tok, "dev-1", cmd("crash-2", "reboot", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Less(t, time.Since(start), 500*time.Millisecond)
	assert.Len(t, g.drain(), 1)
	rec, err := g.store.Get(ctx, "app-1", "crash-2")
	require.NoError(t, err)
	assert.Equal(t, protocol.StatusQueued, rec.Status)
}

// A message no queue takes is returned: 503, never 202, and the
// reservation is released so a retry publishes again.
func TestUnroutableIs503(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ch, err := g.conn.Channel()
	require.NoError(t, err)
	// The queue of dev-1 (and of dev-1 only) takes no command.
	q := g.topo.CommandQueueOf("dev-1", g.topo.PartitionCount)
	exchange, key := g.topo.CommandRoute(q)
	require.NoError(t, ch.QueueUnbind(g.topo.CommandQueue(q), key, exchange, nil))
	ch.Close()

	r := g.post(tok, "dev-1", cmd("u1", "reboot", nil))
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeUnavailable, r.errorCode(t))
	assert.Equal(t, protocol.ReasonNotAccepted, r.errorReason(t))
	assert.Equal(t, "1", r.Header.Get("Retry-After"))
	_, err = g.store.Get(context.Background(), "app-1", "u1")
	assert.ErrorIs(t, err, mailbox.ErrNotFound, "reservation released")

	// A batch where nothing is accepted is a 503 with the entries.
	r = g.post(tok, "dev-1", []any{cmd("u2", "a", nil), cmd("u3", "b", nil)})
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.NotEmpty(t, r.Header.Get("Retry-After"))

	// Bound again: the retry is accepted.
	ch, err = g.conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.QueueBind(g.topo.CommandQueue(q), key, exchange, false, nil))
	ch.Close()
	r = g.post(tok, "dev-1", cmd("u1", "reboot", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Len(t, g.drain(), 1)

	m := g.do(http.MethodGet, "/metrics", "", nil)
	assert.Contains(t, string(m.Body), `gw_api_publish_failures_total{reason="returned"} 3`)
}

// With RabbitMQ unreachable every intake is a fast 503, never a 202, and
// /readyz says so.
func TestBrokerUnreachable(t *testing.T) {
	t.Parallel()
	closed := "amqp://guest:guest@" + testenv.FreeAddr(t) + "/"
	var pub *amqpx.Publisher
	g := newGW(t, func(c *Config, d *Deps) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c.ConfirmTimeout = 5 * time.Second
		p, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: closed, ConfirmTimeout: c.ConfirmTimeout}, protocol.NewTopology(c.Namespace, protocol.DefaultQueues, protocol.DefaultPartitions))
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		d.Publisher, pub = p, p
	})
	require.False(t, pub.Ready())
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	const n = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	var slowest time.Duration
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			r := g.post(tok, "dev-1", cmd(fmt.Sprintf("b%d", i), "reboot", nil))
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			statuses[r.Status]++
			slowest = max(slowest, took)
			if r.Status == http.StatusServiceUnavailable {
				assert.Equal(t, protocol.CodeUnavailable, r.errorCode(t))
				assert.Equal(t, protocol.ReasonNotAccepted, r.errorReason(t))
				assert.Equal(t, "1", r.Header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, map[int]int{http.StatusServiceUnavailable: n}, statuses)
	// Fail fast: nobody waited for a connection or a confirm (5s); the
	// bound is loose for -race on a loaded 2-core machine.
	assert.Less(t, slowest, 2*time.Second, "fail fast")
	_, err := g.store.Get(context.Background(), "app-1", "b1")
	assert.ErrorIs(t, err, mailbox.ErrNotFound, "reservation released")

	r := g.do(http.MethodGet, "/readyz", "", nil)
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Contains(t, string(r.Body), `"rabbitmq":"not connected or blocked"`)
	assert.Len(t, g.drain(), 0)
}

// With Redis unreachable the API answers 503 at once.
func TestRedisUnavailable(t *testing.T) {
	t.Parallel()
	g := newGW(t, func(c *Config, d *Deps) {
		dead := redisAt(t, testenv.FreeAddr(t))
		d.Redis = dead
		d.Store = mailbox.New(dead, c.Namespace, mailbox.Options{})
	})
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	// "At once": each request is answered well within the dial timeout
	// and the write timeout that a hanging Redis call would run into
	// (a bound per request, so that a loaded machine does not add up).
	slowest := time.Duration(0)
	timed := func(do func() *reply) *reply {
		start := time.Now()
		r := do()
		slowest = max(slowest, time.Since(start))
		return r
	}
	r := timed(func() *reply { return g.post(tok, "dev-1", cmd("r1", "reboot", nil)) })
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeUnavailable, r.errorCode(t))
	assert.Equal(t, protocol.ReasonNotAccepted, r.errorReason(t))
	assert.Equal(t, "1", r.Header.Get("Retry-After"))
	for _, path := range []string{"/v1/commands/r1", "/v1/devices/dev-1", "/v1/devices/dev-1/commands"} {
		r = timed(func() *reply { return g.do(http.MethodGet, path, tok, nil) })
		assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s: %s", path, r.Body)
	}
	r = timed(func() *reply { return g.do(http.MethodDelete, "/v1/commands/r1", tok, nil) })
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	r = timed(func() *reply { return g.do(http.MethodGet, "/readyz", "", nil) })
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Less(t, slowest, 3*time.Second, "the slowest answer with Redis unreachable")
	assert.Len(t, g.drain(), 0)
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	g := newGW(t, func(c *Config, _ *Deps) { c.BodyLimit = 1024 })
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	big := cmd("big", "upload", map[string]any{"data": strings.Repeat("x", 2000)})
	r := g.post(tok, "dev-1", big)
	assert.Equal(t, http.StatusRequestEntityTooLarge, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeTooLarge, r.errorCode(t))

	// Without a Content-Length (chunked), the limit holds while reading.
	raw, _ := json.Marshal(big)
	req, err := http.NewRequest(http.MethodPost, g.ts.URL+"/v1/devices/dev-1/commands", io.MultiReader(bytes.NewReader(raw)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Len(t, g.drain(), 0)

	// Just under the limit is fine.
	r = g.post(tok, "dev-1", cmd("small", "upload", map[string]any{"data": strings.Repeat("x", 900)}))
	assert.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	g.drain()
}

// redisAt returns a Redis client for an address where nothing listens.
func redisAt(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// A publish whose confirm never comes may still have queued the command:
// the 503 says the outcome is unknown (data.reason "outcome_unknown")
// and the message is indeed in the queue; a retry with the same id is
// safe and ends in one command. A publish that certainly failed says
// "not_accepted" (TestUnroutableIs503, TestBrokerUnreachable).
func TestUnconfirmedPublishIsOutcomeUnknown(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testenv.AMQPURL())
	require.NoError(t, err)
	proxy := testenv.NewStallProxy(t, u.Host)
	u.Host = proxy.Addr()
	g := newGW(t, func(c *Config, d *Deps) {
		c.ConfirmTimeout = 500 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: u.String(), ConfirmTimeout: c.ConfirmTimeout, Logger: testenv.Logger(t)}, protocol.NewTopology(c.Namespace, protocol.DefaultQueues, protocol.DefaultPartitions))
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		require.Eventually(t, p.Ready, 5*time.Second, 10*time.Millisecond, "publisher not ready")
		d.Publisher = p
	})
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	proxy.Stall(true) // RabbitMQ takes the message; its confirm never arrives
	r := g.post(tok, "dev-1", cmd("u1", "reboot", nil))
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	var e struct {
		Error *protocol.Error `json:"error"`
	}
	r.json(t, &e)
	require.NotNil(t, e.Error)
	assert.Equal(t, protocol.CodeUnavailable, e.Error.Code)
	var data struct {
		Reason string `json:"reason"`
	}
	require.NoError(t, json.Unmarshal(e.Error.Data, &data))
	assert.Equal(t, protocol.ReasonOutcomeUnknown, data.Reason, "data.reason")
	assert.Contains(t, e.Error.Message, "may have been accepted")
	assert.Len(t, g.drain(), 1, "the unconfirmed command is in its queue: 'not accepted' would have been a lie")

	// Retries with the same id: outcome_unknown while the reservation's
	// lease runs, then the retry retakes it and publishes (a duplicate
	// message is harmless: the worker's dispatch is a compare-and-set).
	proxy.Stall(false)
	require.Eventually(t, func() bool {
		r = g.post(tok, "dev-1", cmd("u1", "reboot", nil))
		if r.Status == http.StatusServiceUnavailable {
			require.Equal(t, protocol.ReasonOutcomeUnknown, r.errorReason(t), "%s", r.Body)
		}
		return r.Status == http.StatusOK || r.Status == http.StatusAccepted
	}, 20*time.Second, 100*time.Millisecond, "retries with the same id never got 200 or 202")
	c, err := g.store.Get(context.Background(), "app-1", "u1")
	require.NoError(t, err)
	assert.Contains(t, []protocol.Status{protocol.StatusPending, protocol.StatusQueued}, c.Status)
}

// A one-way command (?one_way=true) is stored with answer timeout 0 and
// shown as one_way; it takes no timeout; one_way is part of the body's
// identity.
func TestOneWayIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := g.post(tok, "dev-1", cmd("ow", "led", map[string]any{"on": true}), "one_way=true")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	msgs := g.drain()
	require.Len(t, msgs, 1)
	env, err := protocol.DecodeEnvelope(msgs[0].Body)
	require.NoError(t, err)
	assert.Zero(t, env.AnswerWithinMS, "the envelope's answer-within of a one-way command")

	r = g.do(http.MethodGet, "/v1/commands/ow", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v commandView
	r.json(t, &v)
	assert.True(t, v.OneWay, "one_way in the view")
	assert.Zero(t, v.TimeoutMS)

	tests := []struct {
		name, id string
		query    []string
		want     int
	}{
		{"the same again", "ow", []string{"one_way=true"}, http.StatusOK},
		{"the same id, not one-way", "ow", nil, http.StatusConflict},
		{"one-way with a timeout", "ow2", []string{"one_way=true", "timeout=5s"}, http.StatusBadRequest},
		{"one_way not a boolean", "ow3", []string{"one_way=maybe"}, http.StatusBadRequest},
		{"one_way=false", "ow4", []string{"one_way=false"}, http.StatusAccepted},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "led", map[string]any{"on": true}), tt.query...)
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
	}
}

// not_before: an RFC 3339 time or a duration, at most 30 days ahead; the
// command is accepted now and shows its not_before; the same id with
// another not_before is a conflict.
func TestNotBeforeIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	before := time.Now()
	r := g.post(tok, "dev-1", cmd("nb", "reboot", nil), "not_before=10m")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	r = g.do(http.MethodGet, "/v1/commands/nb", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v commandView
	r.json(t, &v)
	assert.WithinDuration(t, before.Add(10*time.Minute), v.NotBefore, 5*time.Second, "not_before")
	assert.WithinDuration(t, v.NotBefore.Add(time.Hour), v.DeliverBy, time.Second, "deliver_by counts expires_in from not_before")

	at := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name, id, notBefore string
		want                int
	}{
		{"the same again", "nb", "10m", http.StatusOK},
		{"the same id, another not_before", "nb", "11m", http.StatusConflict},
		{"an RFC 3339 time", "nb2", at, http.StatusAccepted},
		{"in the past: at once", "nb3", "2020-01-01T00:00:00Z", http.StatusAccepted},
		{"more than 30 days ahead", "nb4", "800h", http.StatusBadRequest},
		{"neither a time nor a duration", "nb5", "tomorrow", http.StatusBadRequest},
		{"a negative duration", "nb6", "-5m", http.StatusBadRequest},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "reboot", nil), "not_before="+url.QueryEscape(tt.notBefore))
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
	}
}

// retries: 0 to 10, not with one_way, part of the body's identity, shown.
func TestRetriesIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := g.post(tok, "dev-1", cmd("rt", "reboot", nil), "retries=2")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	r = g.do(http.MethodGet, "/v1/commands/rt", tok, nil)
	var v commandView
	r.json(t, &v)
	assert.Equal(t, 2, v.Retries)
	tests := []struct {
		name, id string
		query    []string
		want     int
	}{
		{"the same again", "rt", []string{"retries=2"}, http.StatusOK},
		{"the same id, other retries", "rt", []string{"retries=3"}, http.StatusConflict},
		{"too many", "rt2", []string{"retries=11"}, http.StatusBadRequest},
		{"not a number", "rt3", []string{"retries=x"}, http.StatusBadRequest},
		{"with one_way", "rt4", []string{"retries=1", "one_way=true"}, http.StatusBadRequest},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "reboot", nil), tt.query...)
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
	}
}

// retry_on and max_attempts: the outcomes a retry policy takes, part of
// the body's identity in canonical form (the default, timeout, is the
// identity of a body without it), shown; max_attempts is retries + 1;
// every bad option is a 400 that names it.
func TestRetryOnIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := g.post(tok, "dev-1", cmd("ro", "reboot", nil), "retries=2", "retry_on=rejected,device_error")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	r = g.do(http.MethodGet, "/v1/commands/ro", tok, nil)
	var v commandView
	r.json(t, &v)
	assert.Equal(t, "device_error,rejected", v.RetryOn, "retry_on in its canonical form")
	assert.Equal(t, 1, v.Attempts, "the first attempt")
	r = g.post(tok, "dev-1", cmd("rd", "reboot", nil), "retries=1")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)

	tests := []struct {
		name, id string
		query    []string
		want     int
		says     string // in the 400's message
	}{
		{"the same set, another order", "ro", []string{"retries=2", "retry_on=device_error,%20rejected"}, http.StatusOK, ""},
		{"max_attempts for retries", "ro", []string{"max_attempts=3", "retry_on=device_error,rejected"}, http.StatusOK, ""},
		{"another set", "ro", []string{"retries=2", "retry_on=device_error"}, http.StatusConflict, ""},
		{"the default named", "rd", []string{"retries=1", "retry_on=timeout"}, http.StatusOK, ""},
		{"unknown outcome", "ro1", []string{"retries=1", "retry_on=failed"}, http.StatusBadRequest, `unknown outcome`},
		{"empty", "ro2", []string{"retries=1", "retry_on="}, http.StatusBadRequest, "retry_on is empty"},
		{"named twice", "ro3", []string{"retries=1", "retry_on=expired,expired"}, http.StatusBadRequest, "named twice"},
		{"without retries", "ro4", []string{"retry_on=expired"}, http.StatusBadRequest, "retry_on: needs retries"},
		{"one_way", "ro5", []string{"one_way=true", "retry_on=rejected"}, http.StatusBadRequest, "retry_on: a one-way command"},
		{"one_way with max_attempts", "ro6", []string{"one_way=true", "max_attempts=2"}, http.StatusBadRequest, "max_attempts: a one-way command"},
		{"max_attempts 0", "ro7", []string{"max_attempts=0"}, http.StatusBadRequest, "max_attempts: must be an integer from 1 to 11"},
		{"max_attempts 12", "ro8", []string{"max_attempts=12"}, http.StatusBadRequest, "max_attempts: must be"},
		{"retries and max_attempts", "ro9", []string{"retries=1", "max_attempts=2"}, http.StatusBadRequest, "not both"},
		{"max_attempts 1 with retry_on", "ro10", []string{"max_attempts=1", "retry_on=timeout"}, http.StatusBadRequest, "retry_on: needs retries"},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "reboot", nil), tt.query...)
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
		if tt.says != "" {
			assert.Contains(t, string(r.Body), tt.says, tt.name)
		}
	}
}
