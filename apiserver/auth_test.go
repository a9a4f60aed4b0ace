package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/protocol"
)

func TestAuthTokens(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	claims := func(sub string, role auth.Role, exp time.Time) auth.Claims {
		return auth.Claims{Role: role, Devices: []string{"dev-*"}, RegisteredClaims: jwt.RegisteredClaims{
			Subject: sub, ExpiresAt: jwt.NewNumericDate(exp)}}
	}
	sign := func(m jwt.SigningMethod, key any, c auth.Claims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		require.NoError(t, err)
		return s
	}
	valid := claims("app-1", auth.RoleClient, time.Now().Add(time.Hour))
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	// alg "none": header and claims, no signature.
	b64 := base64.RawURLEncoding.EncodeToString
	none := b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		b64([]byte(`{"sub":"app-1","role":"client","devices":["dev-*"],"exp":`+strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)+`}`)) + "."
	// An HS256 token whose header claims RS256.
	good := sign(jwt.SigningMethodHS256, []byte(testSecret), valid)
	parts := strings.Split(good, ".")
	rs256Header := b64([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2]

	for _, tc := range []struct {
		name   string
		header string
		status int
	}{
		{"missing", "", 401},
		{"not bearer", "Basic " + good, 401},
		{"garbage", "Bearer not-a-token", 401},
		{"wrong secret", "Bearer " + sign(jwt.SigningMethodHS256, []byte("other-secret"), valid), 401},
		{"alg none", "Bearer " + none, 401},
		{"RS256 signed", "Bearer " + sign(jwt.SigningMethodRS256, rsaKey, valid), 401},
		{"RS256 header", "Bearer " + rs256Header, 401},
		{"HS512", "Bearer " + sign(jwt.SigningMethodHS512, []byte(testSecret), valid), 401},
		{"expired", "Bearer " + sign(jwt.SigningMethodHS256, []byte(testSecret), claims("app-1", auth.RoleClient, time.Now().Add(-time.Minute))), 401},
		{"no role", "Bearer " + sign(jwt.SigningMethodHS256, []byte(testSecret), claims("app-1", "", time.Now().Add(time.Hour))), 401},
		{"bad sub", "Bearer " + sign(jwt.SigningMethodHS256, []byte(testSecret), claims("app/1", auth.RoleClient, time.Now().Add(time.Hour))), 401},
		{"device role", "Bearer " + token(t, "dev-1", auth.RoleDevice), 401},
		{"outside globs", "Bearer " + token(t, "app-1", auth.RoleClient, "pump-*"), 403},
		{"no globs", "Bearer " + token(t, "app-1", auth.RoleClient), 403},
		{"valid", "Bearer " + good, 202},
		{"operator", "Bearer " + token(t, "ops", auth.RoleOperator), 202},
	} {
		r := g.do(http.MethodPost, "/v1/devices/dev-1/commands", "", cmd("a-"+strings.ReplaceAll(tc.name, " ", "-"), "m", nil),
			"Authorization", tc.header)
		assert.Equal(t, tc.status, r.Status, "%s: %s", tc.name, r.Body)
		switch tc.status {
		case 401:
			assert.Equal(t, protocol.CodeUnauthorized, r.errorCode(t), tc.name)
		case 403:
			assert.Equal(t, protocol.CodeForbidden, r.errorCode(t), tc.name)
		}
	}
	assert.Len(t, g.drain(), 2, "only the valid and the operator's command")

	// Authentication comes before the body: an unauthenticated body larger
	// than the limit is a 401, not a 413.
	huge := strings.Repeat("x", int(g.cfg.BodyLimit)+10)
	r := g.do(http.MethodPost, "/v1/devices/dev-1/commands", "", huge)
	assert.Equal(t, http.StatusUnauthorized, r.Status, "%s", r.Body)

	// Every client endpoint refuses devices and anonymous callers.
	dev := token(t, "dev-1", auth.RoleDevice)
	for _, ep := range []struct{ method, path string }{
		{http.MethodGet, "/v1/commands/1"},
		{http.MethodDelete, "/v1/commands/1"},
		{http.MethodGet, "/v1/devices/dev-1"},
		{http.MethodGet, "/v1/devices/dev-1/commands"},
		{http.MethodDelete, "/v1/devices/dev-1/commands"},
	} {
		for _, tok := range []string{"", dev} {
			r := g.do(ep.method, ep.path, tok, nil)
			assert.Equal(t, http.StatusUnauthorized, r.Status, "%s %s: %s", ep.method, ep.path, r.Body)
			assert.Equal(t, protocol.CodeUnauthorized, r.errorCode(t))
			assert.Contains(t, r.Header.Get("WWW-Authenticate"), "Bearer", "%s %s: a 401 names its scheme", ep.method, ep.path)
			assert.Equal(t, "nosniff", r.Header.Get("X-Content-Type-Options"), "%s %s", ep.method, ep.path)
		}
	}
}

// Clients see only their own commands; operators any client's with
// ?client=.
func TestClientIsolation(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	app1 := token(t, "app-1", auth.RoleClient, "dev-*")
	app2 := token(t, "app-2", auth.RoleClient, "dev-*")
	ops := token(t, "ops", auth.RoleOperator)
	require.Equal(t, http.StatusAccepted, g.post(app1, "dev-1", cmd("mine", "m", nil)).Status)
	g.drain()

	r := g.do(http.MethodGet, "/v1/commands/mine", app2, nil)
	assert.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeNotFound, r.errorCode(t))
	r = g.do(http.MethodDelete, "/v1/commands/mine", app2, nil)
	assert.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
	r = g.do(http.MethodGet, "/v1/devices/dev-1/commands", app2, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var l listView
	r.json(t, &l)
	assert.Empty(t, l.Commands)

	// A client may not name another client.
	r = g.do(http.MethodGet, "/v1/commands/mine?client=app-1", app2, nil)
	assert.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeForbidden, r.errorCode(t))
	r = g.do(http.MethodGet, "/v1/commands/mine?client=app-1", app1, nil)
	assert.Equal(t, http.StatusOK, r.Status, "naming oneself is fine: %s", r.Body)

	// An operator reads, lists and cancels any client's commands.
	r = g.do(http.MethodGet, "/v1/commands/mine?client=app-1", ops, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var v commandView
	r.json(t, &v)
	assert.Equal(t, "app-1", v.Client)
	assert.Equal(t, "/v1/commands/mine?client=app-1", v.StatusURL)
	r = g.do(http.MethodGet, "/v1/devices/dev-1/commands?client=app-1", ops, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &l)
	assert.Len(t, l.Commands, 1)
	r = g.do(http.MethodDelete, "/v1/commands/mine?client=app-1", ops, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	r.json(t, &v)
	assert.Equal(t, protocol.StatusCancelled, v.Status)
	r = g.do(http.MethodGet, "/v1/commands/mine?client=bad/client", ops, nil)
	assert.Equal(t, http.StatusBadRequest, r.Status, "%s", r.Body)

	// Device views follow the globs.
	r = g.do(http.MethodGet, "/v1/devices/pump-1", app1, nil)
	assert.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
	r = g.do(http.MethodGet, "/v1/devices/pump-1/commands", app1, nil)
	assert.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
	r = g.do(http.MethodDelete, "/v1/devices/pump-1/commands", app1, nil)
	assert.Equal(t, http.StatusForbidden, r.Status, "%s", r.Body)
}

func TestConnect(t *testing.T) {
	t.Parallel()
	g := newGW(t)
	dev := token(t, "dev-1", auth.RoleDevice)
	app := token(t, "app-1", auth.RoleClient, "dev-*")
	ops := token(t, "ops", auth.RoleOperator)

	// No push server: 503.
	r := g.do(http.MethodGet, "/v1/connect/dev-1", dev, nil)
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeUnavailable, r.errorCode(t))

	// A push server joins (another process's ring).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	member := ring.New(g.rdb, g.ns, ring.Options{})
	require.NoError(t, member.Join(ctx, ring.Member{Node: "push-a", URL: "mqtt://127.0.0.1:18830"}))
	defer member.Leave(context.Background())
	require.Eventually(t, func() bool { _, ok := g.ring.Owner("x"); return ok }, 5*time.Second, 20*time.Millisecond)

	for _, tc := range []struct {
		name, tok, identity string
		status              int
	}{
		{"device itself", dev, "dev-1", 200},
		{"client itself", app, "app-1", 200},
		{"operator, anyone", ops, "dev-1", 200},
		{"device, another", dev, "dev-2", 403},
		{"client, its device", app, "dev-1", 403},
		{"no token", "", "dev-1", 401},
		{"bad identity", ops, "-x", 400},
	} {
		r := g.do(http.MethodGet, "/v1/connect/"+tc.identity, tc.tok, nil)
		assert.Equal(t, tc.status, r.Status, "%s: %s", tc.name, r.Body)
		if tc.status == 200 {
			var m memberView
			r.json(t, &m)
			assert.Equal(t, memberView{Node: "push-a", MQTTURL: "mqtt://127.0.0.1:18830"}, m, tc.name)
		}
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	g := newGW(t, func(c *Config, _ *Deps) { c.Rate = 0.5; c.Burst = 3 })
	app1 := token(t, "app-1", auth.RoleClient, "dev-*")
	app2 := token(t, "app-2", auth.RoleClient, "dev-*")
	for i := range 3 {
		r := g.do(http.MethodGet, "/v1/commands/nope", app1, nil)
		require.Equal(t, http.StatusNotFound, r.Status, "request %d: %s", i, r.Body)
	}
	r := g.do(http.MethodGet, "/v1/commands/nope", app1, nil)
	assert.Equal(t, http.StatusTooManyRequests, r.Status, "%s", r.Body)
	assert.Equal(t, protocol.CodeRateLimited, r.errorCode(t))
	assert.Equal(t, "2", r.Header.Get("Retry-After"), "one token every 2s")
	r = g.post(app1, "dev-1", cmd(1, "m", nil))
	assert.Equal(t, http.StatusTooManyRequests, r.Status, "%s", r.Body)

	// Per client: another client is not limited.
	r = g.do(http.MethodGet, "/v1/commands/nope", app2, nil)
	assert.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
	assert.Len(t, g.drain(), 0)
}

func TestLimiterForgetsIdleClients(t *testing.T) {
	l := newLimiter(10, 5)
	now := time.Now()
	for i := range 5 {
		_, ok := l.allow("a", now)
		require.True(t, ok, "token %d", i)
	}
	wait, ok := l.allow("a", now)
	require.False(t, ok)
	assert.InDelta(t, 100*time.Millisecond, wait, float64(5*time.Millisecond))
	_, ok = l.allow("a", now.Add(100*time.Millisecond))
	assert.True(t, ok, "refilled")
	_, _ = l.allow("b", now.Add(3*time.Minute)) // sweeps "a"
	assert.Len(t, l.buckets, 1)

	off := newLimiter(-1, 0)
	for range 100 {
		_, ok := off.allow("a", now)
		require.True(t, ok)
	}
}
