package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestHTTPDevice: a device without MQTT polls its commands, answers one,
// acknowledges another in its next poll, and a long-poll returns when a
// command arrives; the same ids and requests as over MQTT; one-way
// commands succeed at the ack.
func TestHTTPDevice(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	app := token(t, "app-1", auth.RoleClient, "dev-*")
	dev := token(t, "dev-h", auth.RoleDevice)
	for _, id := range []string{"h1", "h2"} {
		r := g.post(app, "dev-h", cmd(id, "reboot", map[string]any{"n": id}))
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	}
	r := g.post(app, "dev-h", cmd("h3", "led", nil), "one_way=true")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	g.dispatch()

	poll := func(query string) pollView {
		t.Helper()
		r := g.do(http.MethodGet, "/v1/devices/dev-h/commands/next"+query, dev, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var v pollView
		r.json(t, &v)
		return v
	}
	v := poll("")
	require.Len(t, v.Commands, 3)
	acks := map[string]string{}
	for _, c := range v.Commands {
		var req protocol.Request
		require.NoError(t, json.Unmarshal(c.Request, &req))
		id, _ := req.ID.MarshalJSON()
		acks[string(id)] = c.Ack
	}
	require.Contains(t, acks, `"app-1:h1"`, "the device-facing ids, as over MQTT")
	assert.Empty(t, poll("").Commands, "within the visibility, polled commands are hidden")

	// h1 is answered; h2 and the one-way h3 are acknowledged in the next poll.
	r = g.do(http.MethodPost, "/v1/devices/dev-h/responses", dev, `{"jsonrpc":"2.0","result":{"ok":true},"id":"app-1:h1"}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var o responseOutcome
	r.json(t, &o)
	assert.Equal(t, "succeeded", o.Outcome)
	assert.Empty(t, poll("?ack="+acks[`"app-1:h2"`]+","+acks[`"app-1:h3"`]).Commands)
	for id, want := range map[string]protocol.Status{"h1": protocol.StatusSucceeded, "h2": protocol.StatusDelivered, "h3": protocol.StatusSucceeded} {
		c, err := g.store.Get(t.Context(), "app-1", id)
		require.NoError(t, err)
		assert.Equal(t, want, c.Status, id)
	}

	// A batch of answers: h2's, an unknown one, a malformed one.
	r = g.do(http.MethodPost, "/v1/devices/dev-h/responses", dev,
		`[{"jsonrpc":"2.0","error":{"code":-1,"message":"no"},"id":"app-1:h2"},{"jsonrpc":"2.0","result":1,"id":"app-1:nope"},{"id":5}]`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var os []responseOutcome
	r.json(t, &os)
	require.Len(t, os, 3)
	assert.Equal(t, []string{"failed", "unknown", "malformed"}, []string{os[0].Outcome, os[1].Outcome, os[2].Outcome})

	// A long-poll returns when a command arrives.
	got := make(chan pollView, 1)
	go func() {
		r := g.do(http.MethodGet, "/v1/devices/dev-h/commands/next?wait=8s", dev, nil)
		var v pollView
		if r.Status == http.StatusOK {
			r.json(t, &v)
		}
		got <- v
	}()
	require.Eventually(t, func() bool {
		g.srv.polls.mu.Lock()
		defer g.srv.polls.mu.Unlock()
		return g.srv.polls.n["dev-h"] == 1
	}, 10*time.Second, 10*time.Millisecond, "the long-poll is not waiting")
	r = g.post(app, "dev-h", cmd("h4", "reboot", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	g.dispatch()
	select {
	case v := <-got:
		require.Len(t, v.Commands, 1)
		assert.Contains(t, string(v.Commands[0].Request), `"app-1:h4"`)
	case <-time.After(15 * time.Second):
		t.Fatal("the long-poll did not return with the new command")
	}
}

// TestHTTPDeviceRefusals: only the device's own token; a device holding
// an MQTT session polls nothing; bad parameters are 400.
func TestHTTPDeviceRefusals(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	dev := token(t, "dev-r", auth.RoleDevice)
	require.NoError(t, g.store.SetSession(t.Context(), "dev-m", "push-1"))
	tests := []struct {
		name, method, path, tok, body string
		want                          int
	}{
		{"a client token", http.MethodGet, "/v1/devices/dev-r/commands/next", token(t, "app-1", auth.RoleClient, "dev-*"), "", http.StatusUnauthorized},
		{"another device's token", http.MethodGet, "/v1/devices/dev-x/commands/next", dev, "", http.StatusForbidden},
		{"max 0", http.MethodGet, "/v1/devices/dev-r/commands/next?max=0", dev, "", http.StatusBadRequest},
		{"a bad ack token", http.MethodGet, "/v1/devices/dev-r/commands/next?ack=x", dev, "", http.StatusBadRequest},
		{"too many acks", http.MethodGet, "/v1/devices/dev-r/commands/next?ack=" + strings.Repeat("1-1,", 100) + "1-1", dev, "", http.StatusBadRequest},
		{"an MQTT session", http.MethodGet, "/v1/devices/dev-m/commands/next", token(t, "dev-m", auth.RoleDevice), "", http.StatusConflict},
		{"an empty batch", http.MethodPost, "/v1/devices/dev-r/responses", dev, `[]`, http.StatusBadRequest},
		{"not JSON", http.MethodPost, "/v1/devices/dev-r/responses", dev, `[nope`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		var body any
		if tt.body != "" {
			body = tt.body
		}
		r := g.do(tt.method, tt.path, tt.tok, body)
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
	}
}

// TestHTTPDeviceTrace: a polled command carries its traceparent; an answer
// posted with it (or a child of it: the same trace) continues the trace
// into the client's result, an answer in another trace does not.
func TestHTTPDeviceTrace(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	app := token(t, "app-1", auth.RoleClient, "dev-*")
	dev := token(t, "dev-t", auth.RoleDevice)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, id := range []string{"t1", "t2"} {
		r := g.do(http.MethodPost, "/v1/devices/dev-t/commands", app, cmd(id, "reboot", nil), "traceparent", tp)
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	}
	g.dispatch()
	r := g.do(http.MethodGet, "/v1/devices/dev-t/commands/next", dev, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v pollView
	r.json(t, &v)
	require.Len(t, v.Commands, 2)
	for _, c := range v.Commands {
		assert.Equal(t, tp, c.TraceParent, "traceparent of polled %s", c.Request)
	}

	answers := []struct{ id, header, want string }{
		{"t1", "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"},
		{"t2", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tp},
	}
	for _, a := range answers {
		r := g.do(http.MethodPost, "/v1/devices/dev-t/responses", dev,
			`{"jsonrpc":"2.0","result":{"ok":true},"id":"app-1:`+a.id+`"}`, "traceparent", a.header)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	}
	es, err := g.store.Fetch(t.Context(), "app-1", "", 10)
	require.NoError(t, err)
	require.Len(t, es, 2)
	got := map[string]string{}
	for _, e := range es {
		resp, err := protocol.ParseResponse(e.Payload)
		require.NoError(t, err)
		got[string(resp.ID)] = e.TraceParent
	}
	for _, a := range answers {
		assert.Equal(t, a.want, got[`"`+a.id+`"`], "traceparent of %s's result (answered with %s)", a.id, a.header)
	}
}
