package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestHTTPDeviceBadRequests: every bad request to the device endpoints
// gets its status and a JSON-RPC error object that says what is wrong,
// and changes nothing: a command polled before is still on the wire,
// neither acknowledged by the bad poll's ack= nor offered again.
func TestHTTPDeviceBadRequests(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	app := token(t, "app-1", auth.RoleClient, "dev-*")
	dev := token(t, "dev-e", auth.RoleDevice)
	require.Equal(t, http.StatusAccepted, g.post(app, "dev-e", cmd("e1", "reboot", nil)).Status)
	g.dispatch()
	r := g.do(http.MethodGet, "/v1/devices/dev-e/commands/next", dev, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v pollView
	r.json(t, &v)
	require.Len(t, v.Commands, 1)
	ack := v.Commands[0].Ack

	next := "/v1/devices/dev-e/commands/next"
	resp := "/v1/devices/dev-e/responses"
	tests := []struct {
		name, method, path, tok, body string
		status, code                  int
		says                          string // in the error's message
	}{
		{"no token", http.MethodGet, next, "", "", http.StatusUnauthorized, protocol.CodeUnauthorized, ""},
		{"a bad token", http.MethodGet, next, "x.y.z", "", http.StatusUnauthorized, protocol.CodeUnauthorized, ""},
		{"a client's token", http.MethodGet, next, app, "", http.StatusUnauthorized, protocol.CodeUnauthorized, ""},
		{"another device's token", http.MethodGet, "/v1/devices/dev-x/commands/next", dev, "", http.StatusForbidden, protocol.CodeForbidden, "dev-x"},
		{"answers with another device's token", http.MethodPost, "/v1/devices/dev-x/responses", dev, `{"jsonrpc":"2.0","result":1,"id":"app-1:e1"}`, http.StatusForbidden, protocol.CodeForbidden, "dev-x"},
		{"a bad device id", http.MethodGet, "/v1/devices/-bad/commands/next", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "device_id"},
		{"max not a number", http.MethodGet, next + "?max=x", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "max"},
		{"max too big", http.MethodGet, next + "?max=101", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "max"},
		{"wait not a duration", http.MethodGet, next + "?wait=soon", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "wait"},
		{"wait too long", http.MethodGet, next + "?wait=1000h", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "wait"},
		{"a good ack beside a bad one", http.MethodGet, next + "?ack=" + ack + ",nope", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "ack"},
		{"a good ack and a bad max", http.MethodGet, next + "?ack=" + ack + "&max=0", dev, "", http.StatusBadRequest, protocol.CodeInvalidRequest, "max"},
		{"not JSON", http.MethodPost, resp, dev, `{nope`, http.StatusBadRequest, protocol.CodeParseError, "JSON"},
		{"not a response", http.MethodPost, resp, dev, `{"jsonrpc":"2.0","method":"x","id":"app-1:e1"}`, http.StatusBadRequest, protocol.CodeInvalidRequest, ""},
		{"an id without the client", http.MethodPost, resp, dev, `{"jsonrpc":"2.0","result":1,"id":"e1"}`, http.StatusBadRequest, protocol.CodeInvalidRequest, "id"},
		{"an integer id", http.MethodPost, resp, dev, `{"jsonrpc":"2.0","result":1,"id":5}`, http.StatusBadRequest, protocol.CodeInvalidRequest, "id"},
		{"not JSON in a batch", http.MethodPost, resp, dev, `[nope`, http.StatusBadRequest, protocol.CodeParseError, ""},
		{"an empty batch", http.MethodPost, resp, dev, `[]`, http.StatusBadRequest, protocol.CodeInvalidRequest, "batch"},
		{"a batch too big", http.MethodPost, resp, dev, "[" + strings.Repeat(`{"jsonrpc":"2.0","result":1,"id":"app-1:e1"},`, protocol.MaxBatch) + `{"jsonrpc":"2.0","result":1,"id":"app-1:e1"}]`, http.StatusBadRequest, protocol.CodeInvalidRequest, "batch"},
		{"a body too large", http.MethodPost, resp, dev, `{"jsonrpc":"2.0","result":"` + strings.Repeat("x", 70<<10) + `","id":"app-1:e1"}`, http.StatusRequestEntityTooLarge, protocol.CodeTooLarge, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body any
			if tt.body != "" {
				body = tt.body
			}
			r := g.do(tt.method, tt.path, tt.tok, body)
			require.Equal(t, tt.status, r.Status, "%s", r.Body)
			var e struct {
				Error *protocol.Error `json:"error"`
			}
			r.json(t, &e)
			require.NotNil(t, e.Error, "a JSON-RPC error object: %s", r.Body)
			assert.Equal(t, tt.code, e.Error.Code, "%s", r.Body)
			assert.NotEmpty(t, e.Error.Message)
			assert.Contains(t, e.Error.Message, tt.says, "the message names what is wrong")
		})
	}

	// Nothing changed: e1 is still on the wire (sent, not delivered),
	// hidden from polls within its visibility; the good ack delivers it.
	c, err := g.store.Get(t.Context(), "app-1", "e1")
	require.NoError(t, err)
	assert.Equal(t, protocol.StatusSent, c.Status, "after the bad requests")
	assert.Equal(t, 1, c.Attempts, "attempts after the bad requests")
	r = g.do(http.MethodGet, next+"?ack="+ack, dev, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	c, err = g.store.Get(t.Context(), "app-1", "e1")
	require.NoError(t, err)
	assert.Equal(t, protocol.StatusDelivered, c.Status, "after the good ack")
}
