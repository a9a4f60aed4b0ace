package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// dispatch plays the msgworker for every message in the queue: the
// commands go to the devices' mailboxes (sent).
func (g *gw) dispatch() []*protocol.Envelope {
	g.t.Helper()
	envs := g.envelopes()
	for _, env := range envs {
		out, err := g.store.Dispatch(context.Background(), env, "", "")
		require.NoError(g.t, err)
		require.Equal(g.t, mailbox.OutcomeSent, out)
	}
	return envs
}

func TestGetCommandAndLongPoll(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ctx := context.Background()
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd(7, "read", []any{"temp"}), "timeout=10s").Status)

	r := g.do(http.MethodGet, "/v1/commands/7", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v commandView
	r.json(t, &v)
	assert.JSONEq(t, `7`, string(v.ID))
	assert.Equal(t, protocol.StatusQueued, v.Status)
	assert.Equal(t, "read", v.Method)
	assert.JSONEq(t, `["temp"]`, string(v.Params))
	assert.Equal(t, int64(10000), v.TimeoutMS)
	assert.False(t, v.CreatedAt.IsZero())
	assert.False(t, v.QueuedAt.IsZero())
	assert.True(t, v.SentAt.IsZero())
	assert.Nil(t, v.Response)

	// Errors of the path and the query.
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v1/commands/8", 404},
		{"/v1/commands/-bad", 400},
		{"/v1/commands/7?wait=soon", 400},
		{"/v1/commands/0123", 404}, // a string key, not the integer 123
		{"/v1/commands/" + strings.Repeat("a", 129), 400},
	} {
		r := g.do(http.MethodGet, tc.path, tok, nil)
		assert.Equal(t, tc.status, r.Status, "%s: %s", tc.path, r.Body)
	}

	// The wait ends without a final status: the current one.
	start := time.Now()
	r = g.do(http.MethodGet, "/v1/commands/7?wait=400ms", tok, nil)
	took := time.Since(start)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &v)
	assert.Equal(t, protocol.StatusQueued, v.Status)
	assert.GreaterOrEqual(t, took, 400*time.Millisecond)
	assert.Less(t, took, 2*time.Second)

	// The worker sends it and the device answers while a client waits:
	// the long-poll returns at the final state, with the response.
	envs := g.dispatch()
	require.Len(t, envs, 1)
	done := make(chan *reply, 1)
	start = time.Now()
	go func() { done <- g.do(http.MethodGet, "/v1/commands/7?wait=30", tok, nil) }()
	waitPolling(t, g.srv, "app-1", 1)
	es, err := g.store.Fetch(ctx, "dev-1", "", 10) // the push server takes it
	require.NoError(t, err)
	require.Len(t, es, 1)
	resp, err := protocol.ParseResponse([]byte(`{"jsonrpc":"2.0","result":{"temp":21.5},"id":"app-1:7"}`))
	require.NoError(t, err)
	out, err := g.store.Complete(ctx, "app-1", "7", "dev-1", resp, 0, "")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeSucceeded, out)
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the long-poll did not return at the final state")
	}
	assert.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &v)
	assert.Equal(t, protocol.StatusSucceeded, v.Status)
	assert.Equal(t, 1, v.Attempts)
	assert.Equal(t, 1, v.Publishes)
	assert.False(t, v.SentAt.IsZero())
	assert.False(t, v.SendingAt.IsZero())
	assert.False(t, v.FinishedAt.IsZero())
	var got protocol.Response
	require.NoError(t, json.Unmarshal(v.Response, &got))
	assert.JSONEq(t, `{"temp":21.5}`, string(got.Result))
	assert.JSONEq(t, `7`, string(got.ID), "the client's own id")

	// A final command answers a long-poll at once.
	start = time.Now()
	r = g.do(http.MethodGet, "/v1/commands/7?wait=30s", tok, nil)
	assert.Equal(t, http.StatusOK, r.Status)
	assert.Less(t, time.Since(start), time.Second)
}

func TestLongPollReturnsOnCancel(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd("lp", "m", nil)).Status)
	g.drain()
	done := make(chan *reply, 1)
	go func() { done <- g.do(http.MethodGet, "/v1/commands/lp?wait=20s", tok, nil) }()
	waitPolling(t, g.srv, "app-1", 1)
	_, err := g.store.Cancel(context.Background(), "app-1", "lp", "")
	require.NoError(t, err)
	var r *reply
	select {
	case r = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("the long-poll did not return at the final state")
	}
	var v commandView
	r.json(t, &v)
	assert.Equal(t, protocol.StatusCancelled, v.Status)
	var resp protocol.Response
	require.NoError(t, json.Unmarshal(v.Response, &resp))
	require.NotNil(t, resp.Error)
	assert.Equal(t, protocol.CodeCancelled, resp.Error.Code)
}

func TestCancel(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ctx := context.Background()
	for _, id := range []string{"c-queued", "c-wire"} {
		require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd(id, "m", nil)).Status)
	}
	// c-wire reaches the device's mailbox and a push server takes it (on
	// the wire); c-queued stays queued.
	for _, env := range g.envelopes() {
		if env.MsgID.Key() == "c-queued" {
			continue
		}
		_, err := g.store.Dispatch(ctx, env, "", "")
		require.NoError(t, err)
	}
	es, err := g.store.Fetch(ctx, "dev-1", "", 10)
	require.NoError(t, err)
	require.Len(t, es, 1)
	for _, tc := range []struct {
		id     string
		status int
		after  protocol.Status
	}{
		{"c-queued", 200, protocol.StatusCancelled},
		{"c-wire", 409, protocol.StatusSent},
		{"c-queued", 409, protocol.StatusCancelled}, // already final
		{"nope", 404, ""},
	} {
		r := g.do(http.MethodDelete, "/v1/commands/"+tc.id, tok, nil)
		require.Equal(t, tc.status, r.Status, "%s: %s", tc.id, r.Body)
		switch tc.status {
		case 200:
			var v commandView
			r.json(t, &v)
			assert.Equal(t, tc.after, v.Status)
		case 409:
			var e struct {
				Error protocol.Error `json:"error"`
			}
			r.json(t, &e)
			assert.Equal(t, protocol.CodeConflict, e.Error.Code)
			assert.Contains(t, string(e.Error.Data), `"status":"`+string(tc.after)+`"`)
		}
	}

	// sent but not yet taken by a push server: still cancellable.
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-2", cmd("c-mbox", "m", nil)).Status)
	g.dispatch()
	r := g.do(http.MethodDelete, "/v1/commands/c-mbox", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	n, err := g.store.Len(ctx, "dev-2")
	require.NoError(t, err)
	assert.Zero(t, n, "the mailbox entry went with the cancel")
}

func TestDeviceViewListAndCancelAll(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ctx := context.Background()

	r := g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var dv deviceView
	r.json(t, &dv)
	assert.Equal(t, deviceView{Device: "dev-1"}, dv, "offline, no ring, nothing pending")

	// A push server joins and holds the device's session; two commands
	// wait in its mailbox.
	member := ring.New(g.rdb, g.ns, ring.Options{})
	require.NoError(t, member.Join(ctx, ring.Member{Node: "push-a", URL: "mqtt://127.0.0.1:18831"}))
	defer member.Leave(context.Background())
	require.Eventually(t, func() bool { return len(g.ring.Members()) == 1 }, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, g.store.SetSession(ctx, "dev-1", "push-a"))
	for i := range 5 {
		require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd(fmt.Sprintf("l%d", i), "m", nil)).Status)
		time.Sleep(2 * time.Millisecond) // distinct creation times
	}
	var toSend []*protocol.Envelope
	for _, env := range g.envelopes() {
		if env.MsgID.Key() == "l0" || env.MsgID.Key() == "l1" {
			toSend = append(toSend, env)
		}
	}
	for _, env := range toSend {
		_, err := g.store.Dispatch(ctx, env, "push-a", "")
		require.NoError(t, err)
	}

	r = g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &dv)
	assert.WithinDuration(t, time.Now(), dv.LastSeen, 10*time.Second, "last_seen: the session's start")
	dv.LastSeen = time.Time{}
	assert.Equal(t, deviceView{Device: "dev-1", Online: true, Node: "push-a", MQTTURL: "mqtt://127.0.0.1:18831",
		Owner: &memberView{Node: "push-a", MQTTURL: "mqtt://127.0.0.1:18831"}, Pending: 2, Connection: "mqtt"}, dv)

	// The list: newest first, filtered, paged.
	var l listView
	r = g.do(http.MethodGet, "/v1/devices/dev-1/commands", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &l)
	require.Len(t, l.Commands, 5)
	assert.Equal(t, "l4", keyOf(t, l.Commands[0].ID))
	assert.Empty(t, l.NextCursor)
	r = g.do(http.MethodGet, "/v1/devices/dev-1/commands?status=sent", tok, nil)
	r.json(t, &l)
	assert.Len(t, l.Commands, 2)
	var seen []string
	cursor := ""
	for page := 0; page < 5; page++ {
		path := "/v1/devices/dev-1/commands?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		r = g.do(http.MethodGet, path, tok, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		l = listView{}
		r.json(t, &l)
		for _, c := range l.Commands {
			seen = append(seen, keyOf(t, c.ID))
		}
		if cursor = l.NextCursor; cursor == "" {
			break
		}
	}
	assert.Equal(t, []string{"l4", "l3", "l2", "l1", "l0"}, seen)
	// A mangled cursor is the caller's mistake (400), not a Redis outage.
	for _, q := range []string{"status=nope", "limit=0", "limit=101", "limit=x", "cursor=%21%21", "cursor=Zm9v", "cursor=" + strings.Repeat("A", 300)} {
		r = g.do(http.MethodGet, "/v1/devices/dev-1/commands?"+q, tok, nil)
		assert.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", q, r.Body)
	}

	// Cancel all: the five are not on the wire (nothing fetched).
	r = g.do(http.MethodDelete, "/v1/devices/dev-1/commands", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var ca struct{ Cancelled int }
	r.json(t, &ca)
	assert.Equal(t, 5, ca.Cancelled)
	r = g.do(http.MethodGet, "/v1/devices/dev-1/commands?status=cancelled", tok, nil)
	r.json(t, &l)
	assert.Len(t, l.Commands, 5)
	r = g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil)
	r.json(t, &dv)
	assert.Zero(t, dv.Pending)
}

func keyOf(t *testing.T, raw json.RawMessage) string {
	id, err := protocol.ParseID(raw)
	require.NoError(t, err)
	return id.Key()
}
