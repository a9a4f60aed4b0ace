package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// ?lane= puts a command into an ordered lane of its device: shown in the
// command's view (with lane_wait while it waits behind the lane's head)
// and in the device's view; part of the body's identity; a bad name is a
// 400 with a JSON-RPC error that names the parameter.
func TestLaneIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	for _, id := range []string{"l1", "l2", "l3"} {
		r := g.post(tok, "dev-1", cmd(id, "open", nil), "lane=valve")
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	}
	// The worker takes them last first: only l1, the oldest, is sent.
	envs := g.envelopes()
	require.Len(t, envs, 3)
	for i := len(envs) - 1; i >= 0; i-- {
		want := mailbox.OutcomeLaneWait
		if envs[i].MsgID.Key() == "l1" {
			want = mailbox.OutcomeSent
		}
		out, err := g.store.Dispatch(context.Background(), envs[i], "", "")
		require.NoError(t, err)
		require.Equal(t, want, out, "dispatch of %s", envs[i].MsgID.Key())
	}

	var v commandView
	g.do(http.MethodGet, "/v1/commands/l2", tok, nil).json(t, &v)
	assert.Equal(t, "valve", v.Lane)
	assert.True(t, v.LaneWait, "l2 waits behind l1")
	assert.Equal(t, protocol.StatusQueued, v.Status)

	var dv deviceView
	r := g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &dv)
	require.Len(t, dv.Lanes, 1, "%s", r.Body)
	l := dv.Lanes[0]
	assert.Equal(t, "valve", l.Name)
	assert.Equal(t, 3, l.Commands)
	assert.Equal(t, 2, l.Waiting)
	assert.Equal(t, protocol.StatusSent, l.Status)
	assert.JSONEq(t, `"l1"`, string(l.HeadID))
	assert.False(t, l.Since.IsZero(), "head_since")

	// Another client sees the lane's wait, not whose command holds it.
	other := token(t, "app-2", auth.RoleClient, "dev-*")
	dv = deviceView{}
	g.do(http.MethodGet, "/v1/devices/dev-1", other, nil).json(t, &dv)
	require.Len(t, dv.Lanes, 1)
	assert.Empty(t, dv.Lanes[0].HeadID, "another client's head id")
	assert.Equal(t, 2, dv.Lanes[0].Waiting)

	tests := []struct {
		name, id, lane string
		want           int
	}{
		{"the same again", "l1", "valve", http.StatusOK},
		{"the same id, another lane", "l1", "pump", http.StatusConflict},
		{"empty", "b1", "", http.StatusBadRequest},
		{"too long", "b2", strings.Repeat("x", protocol.MaxLaneLen+1), http.StatusBadRequest},
		{"a separator", "b3", "a|b", http.StatusBadRequest},
		{"a space", "b4", "a b", http.StatusBadRequest},
		{"starts with a dash", "b5", "-a", http.StatusBadRequest},
		{"not ASCII", "b6", "é", http.StatusBadRequest},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "open", nil), "lane="+url.QueryEscape(tt.lane))
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
		if tt.want == http.StatusBadRequest {
			assert.Equal(t, protocol.CodeInvalidRequest, r.errorCode(t), tt.name)
			assert.Contains(t, string(r.Body), "lane:", tt.name)
		}
	}
	assert.Empty(t, g.envelopes(), "nothing published for refused requests")
}

// The device view says how the device connects: over MQTT now, by HTTP
// polls (with the last poll), or offline after MQTT; nothing for a device
// never seen.
func TestDeviceConnection(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	ctx := context.Background()
	app := token(t, "app-1", auth.RoleClient, "dev-*")
	poll := func(d string) {
		t.Helper()
		r := g.do(http.MethodGet, "/v1/devices/"+d+"/commands/next", token(t, d, auth.RoleDevice), nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	}
	// dev-m holds a session; dev-h polls; dev-o had a session; dev-s
	// polled, then came back over MQTT and left.
	require.NoError(t, g.store.SetSession(ctx, "dev-m", "push-1"))
	poll("dev-h")
	require.NoError(t, g.store.SetSession(ctx, "dev-o", "push-1"))
	require.NoError(t, g.store.ClearSession(ctx, "dev-o", "push-1"))
	poll("dev-s")
	require.Eventually(t, func() bool { // the session must be seen after the poll, to the millisecond
		seen, err := g.store.LastSeen(ctx, "dev-s")
		require.NoError(t, err)
		return time.Since(seen) > 2*time.Millisecond
	}, time.Second, time.Millisecond)
	require.NoError(t, g.store.SetSession(ctx, "dev-s", "push-1"))
	require.NoError(t, g.store.ClearSession(ctx, "dev-s", "push-1"))

	tests := []struct {
		device, connection string
		polled             bool
	}{
		{"dev-m", "mqtt", false},
		{"dev-h", "http_poll", true},
		{"dev-o", "offline", false},
		{"dev-s", "offline", true},
		{"dev-never", "", false},
	}
	for _, tt := range tests {
		var v deviceView
		r := g.do(http.MethodGet, "/v1/devices/"+tt.device, app, nil)
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		r.json(t, &v)
		assert.Equal(t, tt.connection, v.Connection, "%s: %s", tt.device, r.Body)
		assert.Equal(t, tt.polled, !v.LastPoll.IsZero(), "%s: last_poll in %s", tt.device, r.Body)
	}
}

// A batch in a lane is accepted in its order: the lane's order is the
// batch's, whatever order the worker then takes the messages in.
func TestLaneBatchOrder(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ids := []string{"b1", "b2", "b3", "b4", "b5", "b6"}
	batch := make([]any, len(ids))
	for i, id := range ids {
		batch[i] = cmd(id, "step", map[string]any{"n": i})
	}
	r := g.post(tok, "dev-b", batch, "lane=steps")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	envs := g.envelopes()
	require.Len(t, envs, len(ids))
	// Dispatched last first, each becomes sent only when all before it
	// in the batch are final: here only b1 is sent.
	for i := len(envs) - 1; i >= 0; i-- {
		_, err := g.store.Dispatch(context.Background(), envs[i], "", "")
		require.NoError(t, err)
	}
	for i, id := range ids {
		var v commandView
		g.do(http.MethodGet, "/v1/commands/"+id, tok, nil).json(t, &v)
		want := protocol.StatusQueued
		if i == 0 {
			want = protocol.StatusSent
		}
		assert.Equal(t, want, v.Status, "%s, number %d of the batch", id, i+1)
	}
}

// lane_mode: final (the default) or puback, only with a lane and without
// retries, part of the body's identity, shown in the command's view.
func TestLaneModeIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := g.post(tok, "dev-1", cmd("pm", "open", nil), "lane=valve", "lane_mode=puback")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	var v commandView
	g.do(http.MethodGet, "/v1/commands/pm", tok, nil).json(t, &v)
	assert.Equal(t, protocol.LaneModePUBACK, v.LaneMode)
	tests := []struct {
		name, id string
		query    []string
		want     int
	}{
		{"the same again", "pm", []string{"lane=valve", "lane_mode=puback"}, http.StatusOK},
		{"the same id, the default mode", "pm", []string{"lane=valve"}, http.StatusConflict},
		{"final is the default", "pf", []string{"lane=valve", "lane_mode=final"}, http.StatusAccepted},
		{"final again, without it", "pf", []string{"lane=valve"}, http.StatusOK},
		{"not a mode", "p1", []string{"lane=valve", "lane_mode=ack"}, http.StatusBadRequest},
		{"without a lane", "p2", []string{"lane_mode=puback"}, http.StatusBadRequest},
		{"with retries", "p3", []string{"lane=valve", "lane_mode=puback", "retries=1"}, http.StatusBadRequest},
	}
	for _, tt := range tests {
		r := g.post(tok, "dev-1", cmd(tt.id, "open", nil), tt.query...)
		assert.Equal(t, tt.want, r.Status, "%s: %s", tt.name, r.Body)
		if tt.want == http.StatusBadRequest {
			assert.Contains(t, string(r.Body), "lane_mode:", tt.name)
		}
	}
}
