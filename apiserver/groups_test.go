package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// groupBodyOf is a POST /v1/commands body to devices.
func groupBodyOf(id any, devices ...string) map[string]any {
	return map[string]any{"request": cmd(id, "reboot", map[string]any{"delay": 1}), "devices": devices}
}

// TestGroupCommandIntake: a group command is answered 202 with one group
// envelope on a command queue (no child is created in the request);
// the same body again is 200 with the group's view, another is 409; a
// DELETE stops it and the children a worker then creates are cancelled;
// named groups are for operators and a client may target one only if its
// globs cover every device.
func TestGroupCommandIntake(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	op := token(t, "ops", auth.RoleOperator)

	r := g.do(http.MethodPost, "/v1/commands?rate=10&abort_after=50%25", tok, groupBodyOf("g1", "dev-1", "dev-2", "dev-3"))
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	var acc acceptedBody
	r.json(t, &acc)
	require.Equal(t, "/v1/group-commands/g1", acc.StatusURL)
	ds := g.drain()
	require.Len(t, ds, 1, "one group envelope, no child")
	env, err := protocol.DecodeGroupEnvelope(ds[0].Body)
	require.NoError(t, err)
	require.Equal(t, "app-1", env.Client)
	require.Equal(t, "g1", env.MsgID.Key())

	r = g.do(http.MethodPost, "/v1/commands?rate=10&abort_after=50%25", tok, groupBodyOf("g1", "dev-1", "dev-2", "dev-3"))
	require.Equal(t, http.StatusOK, r.Status, "the same body again: body %s", r.Body)
	var v groupView
	r.json(t, &v)
	require.Equal(t, 3, v.Total)
	require.Equal(t, 2, v.AbortAt, "50%% of 3 rounds up to 2")
	require.Equal(t, "queued", v.Status)
	require.Equal(t, "g1:{device}", v.ChildIDs)
	require.Empty(t, g.drain(), "the same body publishes nothing")

	r = g.do(http.MethodPost, "/v1/commands?rate=20&abort_after=50%25", tok, groupBodyOf("g1", "dev-1", "dev-2", "dev-3"))
	require.Equal(t, http.StatusConflict, r.Status, "another rate: body %s", r.Body)
	require.Equal(t, protocol.CodeConflict, r.errorCode(t))

	// DELETE before a worker took it: stopped; the children the worker
	// then creates are each cancelled with the reason.
	r = g.do(http.MethodDelete, "/v1/group-commands/g1", tok, nil)
	require.Equal(t, http.StatusOK, r.Status, "body %s", r.Body)
	r.json(t, &v)
	require.Equal(t, "cancelled", v.Status)
	require.NoError(t, g.store.RunGroup(t.Context(), "app-1", "g1", ""))
	r = g.do(http.MethodGet, "/v1/group-commands/g1?wait=5s", tok, nil)
	require.Equal(t, http.StatusOK, r.Status)
	r.json(t, &v)
	require.True(t, v.Done, "view %s", r.Body)
	require.Equal(t, map[string]int{"cancelled": 3}, v.Counts)
	r = g.do(http.MethodGet, "/v1/commands/g1:dev-2", tok, nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.Contains(t, string(r.Body), `"reason":"group cancelled: cancelled by the client"`)
	require.Contains(t, string(r.Body), `"group":"g1"`, "the child names its group")
	r = g.do(http.MethodDelete, "/v1/group-commands/g1", tok, nil)
	require.Equal(t, http.StatusConflict, r.Status, "every child is final")

	// Named groups: operators only; a client's globs must cover all.
	r = g.do(http.MethodPut, "/v1/groups/floor-1", tok, map[string]any{"devices": []string{"dev-1"}})
	require.Equal(t, http.StatusUnauthorized, r.Status, "a client may not set groups")
	r = g.do(http.MethodPut, "/v1/groups/floor-1", op, map[string]any{"devices": []string{"dev-1", "dev-2", "other-7", "other-8"}})
	require.Equal(t, http.StatusCreated, r.Status, "body %s", r.Body)
	r = g.do(http.MethodPut, "/v1/groups/floor-2", op, map[string]any{"devices": []string{"dev-5", "dev-6"}})
	require.Equal(t, http.StatusCreated, r.Status, "body %s", r.Body)
	r = g.do(http.MethodGet, "/v1/groups/floor-1", op, nil)
	require.Equal(t, http.StatusOK, r.Status)
	var dg deviceGroupView
	r.json(t, &dg)
	require.Equal(t, []string{"dev-1", "dev-2", "other-7", "other-8"}, dg.Devices)
	r = g.do(http.MethodPost, "/v1/commands", tok, map[string]any{"request": cmd("g2", "reboot", nil), "group": "floor-1"})
	require.Equal(t, http.StatusForbidden, r.Status, "body %s", r.Body)
	require.Contains(t, string(r.Body), `other-7`, "403 names the first device not covered")
	r = g.do(http.MethodPost, "/v1/commands", tok, map[string]any{"request": cmd("g2", "reboot", nil), "group": "floor-2"})
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	r = g.do(http.MethodGet, "/v1/group-commands?limit=5", op, nil)
	require.Equal(t, http.StatusOK, r.Status, "body %s", r.Body)
	var list struct {
		Groups []groupView `json:"groups"`
	}
	r.json(t, &list)
	require.Len(t, list.Groups, 2)
	require.Equal(t, `"g2"`, string(list.Groups[0].ID), "newest first")
	require.Equal(t, "app-1", list.Groups[0].Client)
	r = g.do(http.MethodGet, "/v1/group-commands", tok, nil)
	require.Equal(t, http.StatusUnauthorized, r.Status, "clients may not list every group")
	r = g.do(http.MethodDelete, "/v1/groups/floor-2", op, nil)
	require.Equal(t, http.StatusNoContent, r.Status)
	r = g.do(http.MethodGet, "/v1/groups/floor-2", op, nil)
	require.Equal(t, http.StatusNotFound, r.Status)
	r = g.do(http.MethodPost, "/v1/commands", tok, map[string]any{"request": cmd("g3", "reboot", nil), "group": "floor-2"})
	require.Equal(t, http.StatusNotFound, r.Status)
}

// TestGroupCommandBadInput: every bad option or target is a 400 with a
// JSON-RPC error naming it, and creates nothing.
func TestGroupCommandBadInput(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	many := make([]string, protocol.MaxGroupDevices+1)
	for i := range many {
		many[i] = fmt.Sprintf("dev-%d", i)
	}
	long := "dev-" + strings.Repeat("x", 124)
	ok := groupBodyOf("b1", "dev-1", "dev-2")
	tests := []struct {
		name, query string
		body        any
		want        string // in the error message
	}{
		{"rate zero", "rate=0", ok, "rate"},
		{"rate negative", "rate=-5", ok, "rate"},
		{"rate not a number", "rate=fast", ok, "rate"},
		{"rate too high", "rate=1e9", ok, "rate"},
		{"abort_after zero", "abort_after=0", ok, "abort_after"},
		{"abort_after above the children", "abort_after=3", ok, "abort_after"},
		{"abort_after percentage zero", "abort_after=0%25", ok, "abort_after"},
		{"abort_after percentage above 100", "abort_after=101%25", ok, "abort_after"},
		{"abort_after garbage", "abort_after=many", ok, "abort_after"},
		{"timeout too short", "timeout=10ms", ok, "timeout"},
		{"expires_in too long", "expires_in=30d", ok, "expires_in"},
		{"one_way", "one_way=true", ok, "one_way"},
		{"not_before", "not_before=1m", ok, "not_before"},
		{"retries out of range", "retries=11", ok, "retries"},
		{"retry_backoff without retries", "retry_backoff=1s", ok, "retry_backoff"},
		{"retry_on without retries", "retry_on=device_error", ok, "retry_on"},
		{"retry_on unknown", "retries=1&retry_on=error", ok, "retry_on"},
		{"retry_backoff too short", "retries=1&retry_backoff=1ms", ok, "retry_backoff"},
		{"no target", "", map[string]any{"request": cmd("b1", "reboot", nil)}, "devices"},
		{"empty list", "", groupBodyOf("b1"), "devices"},
		{"both targets", "", map[string]any{"request": cmd("b1", "reboot", nil), "devices": []string{"dev-1"}, "group": "g"}, "one target"},
		{"bad device", "", groupBodyOf("b1", "dev-1", "dev 2"), `dev 2`},
		{"repeated device", "", groupBodyOf("b1", "dev-1", "dev-1"), "twice"},
		{"too many devices", "", groupBodyOf("b1", many...), "at most 10000"},
		{"child id too long", "", groupBodyOf("b1", long), "child id"},
		{"bad group name", "", map[string]any{"request": cmd("b1", "reboot", nil), "group": "a/b"}, "group"},
		{"no request", "", map[string]any{"devices": []string{"dev-1"}}, "request"},
		{"request without id", "", map[string]any{"request": map[string]any{"jsonrpc": "2.0", "method": "x"}, "devices": []string{"dev-1"}}, "id"},
		{"unknown field", "", map[string]any{"request": cmd("b1", "reboot", nil), "devices": []string{"dev-1"}, "rate": 5}, "unknown field"},
		{"not JSON", "", "{", "body"},
	}
	for _, tt := range tests {
		path := "/v1/commands"
		if tt.query != "" {
			path += "?" + tt.query
		}
		r := g.do(http.MethodPost, path, tok, tt.body)
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400; body %s", tt.name, r.Status, truncate(r.Body))
			continue
		}
		if code := r.errorCode(t); code != protocol.CodeInvalidRequest && code != protocol.CodeParseError {
			t.Errorf("%s: error code %d, want -32600 or -32700", tt.name, code)
		}
		if !strings.Contains(string(r.Body), tt.want) {
			t.Errorf("%s: body %s does not mention %q", tt.name, truncate(r.Body), tt.want)
		}
	}
	require.Empty(t, g.drain(), "no bad request published anything")
	r := g.do(http.MethodGet, "/v1/group-commands/b1", tok, nil)
	require.Equal(t, http.StatusNotFound, r.Status, "no bad request created the group")
}

// TestRetryCommandAPI: POST /v1/commands/{id}/retry publishes a failed
// command again under the same id (202, queued, attempt 2); a command in
// any other status is 409, another client's is 404.
func TestRetryCommandAPI(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	r := g.post(tok, "dev-1", cmd("r1", "reboot", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	envs := g.envelopes()
	require.Len(t, envs, 1)
	ctx := t.Context()
	out, err := g.store.Dispatch(ctx, envs[0], "", "")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeSent, out)

	r = g.do(http.MethodPost, "/v1/commands/r1/retry", tok, nil)
	require.Equal(t, http.StatusConflict, r.Status, "a sent command: body %s", r.Body)

	resp := protocol.NewErrorResponse(json.RawMessage(`"app-1:r1"`), &protocol.Error{Code: 5, Message: "busy"})
	out, err = g.store.Complete(ctx, "app-1", "r1", "dev-1", resp, 0, "")
	require.NoError(t, err)
	require.Equal(t, mailbox.OutcomeFailed, out)

	other := token(t, "app-2", auth.RoleClient, "dev-*")
	r = g.do(http.MethodPost, "/v1/commands/r1/retry", other, nil)
	require.Equal(t, http.StatusNotFound, r.Status, "another client's command")

	r = g.do(http.MethodPost, "/v1/commands/r1/retry", tok, nil)
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	var v commandView
	r.json(t, &v)
	require.Equal(t, protocol.StatusQueued, v.Status)
	envs = g.envelopes()
	require.Len(t, envs, 1, "published again")
	require.Equal(t, 2, envs[0].Attempt)
	require.Equal(t, "r1", envs[0].MsgID.Key())

	r = g.do(http.MethodPost, "/v1/commands/r1/retry", tok, nil)
	require.Equal(t, http.StatusConflict, r.Status, "queued again: body %s", r.Body)
	op := token(t, "ops", auth.RoleOperator)
	r = g.do(http.MethodPost, "/v1/commands/r1/retry?client=app-1", op, nil)
	require.Equal(t, http.StatusConflict, r.Status, "an operator reaches it too")
}

// TestRetryBackoffParam: retry_backoff is checked (a 400 naming it for
// each bad value, nothing accepted) and shown on the command.
func TestRetryBackoffParam(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	for _, q := range []string{
		"retry_backoff=1s",                   // no retries
		"retries=2&retry_backoff=10ms",       // too short
		"retries=2&retry_backoff=2h",         // too long
		"retries=2&retry_backoff=1s,0.5",     // multiplier below 1
		"retries=2&retry_backoff=1s,11",      // above 10
		"retries=2&retry_backoff=1s,2,500ms", // max below initial
		"retries=2&retry_backoff=1s,2,30s,4", // four parts
		"retries=2&retry_backoff=soon",       // not a duration
		"retries=2&retry_backoff=1s,NaN",     // not a number
	} {
		r := g.post(tok, "dev-1", cmd("bo", "reboot", nil), q)
		if r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), "retry_backoff") {
			t.Errorf("%s: %d %s, want 400 naming retry_backoff", q, r.Status, truncate(r.Body))
		}
	}
	require.Empty(t, g.drain(), "nothing accepted")
	r := g.post(tok, "dev-1", cmd("bo", "reboot", nil), "retries=2&retry_backoff=1s,3")
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	r = g.do(http.MethodGet, "/v1/commands/bo", tok, nil)
	require.Equal(t, http.StatusOK, r.Status)
	var v commandView
	r.json(t, &v)
	require.Equal(t, "1s,3,1m0s", v.RetryBackoff)
	r = g.post(tok, "dev-1", cmd("bo", "reboot", nil), "retries=2&retry_backoff=2s,3")
	require.Equal(t, http.StatusConflict, r.Status, "another backoff is another body")
	// A group's children inherit retries, retry_on and their backoff.
	r = g.do(http.MethodPost, "/v1/commands?retries=2&retry_backoff=1s,3&retry_on=device_error,timeout", tok, groupBodyOf("gb", "dev-1"))
	require.Equal(t, http.StatusAccepted, r.Status, "body %s", r.Body)
	r = g.do(http.MethodGet, "/v1/group-commands/gb", tok, nil)
	var gv groupView
	r.json(t, &gv)
	require.Equal(t, 2, gv.Retries)
	require.Equal(t, "1s,3,1m0s", gv.RetryBackoff)
	require.Equal(t, "timeout,device_error", gv.RetryOn)
	require.NoError(t, g.store.RunGroup(t.Context(), "app-1", "gb", ""))
	r = g.do(http.MethodGet, "/v1/commands/gb:dev-1", tok, nil)
	r.json(t, &v)
	require.Equal(t, 2, v.Retries, "the child's retries")
	require.Equal(t, "1s,3,1m0s", v.RetryBackoff, "the child's backoff")
	require.Equal(t, "timeout,device_error", v.RetryOn, "the child's retry_on")
	r = g.do(http.MethodPost, "/v1/commands?retries=2&retry_backoff=1s,3&retry_on=device_error", tok, groupBodyOf("gb", "dev-1"))
	require.Equal(t, http.StatusConflict, r.Status, "another retry_on is another body: %s", r.Body)
}
