package main

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
)

// preflight sends a browser's preflight for method on path from origin.
func (g *gw) preflight(path, origin, method string) *http.Response {
	g.t.Helper()
	req, err := http.NewRequest(http.MethodOptions, g.ts.URL+path, nil)
	require.NoError(g.t, err)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", method)
	req.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(g.t, err)
	_ = resp.Body.Close()
	return resp
}

// TestCORS: with GW_CORS_ORIGINS, a preflight from a configured origin
// gets the Access-Control-Allow-* headers (without a token), and the
// answers to that origin expose Retry-After; another origin gets no CORS
// header; without GW_CORS_ORIGINS nobody does.
func TestCORS(t *testing.T) {
	t.Parallel()
	const allowed, other = "https://console.example.com", "https://evil.example.net"
	g := newGW(t, func(c *Config, _ *Deps) { c.CORSOrigins = []string{allowed, "http://localhost:3000"} })

	r := g.preflight("/v1/devices/dev-1/commands", allowed, http.MethodPost)
	require.Equal(t, http.StatusNoContent, r.StatusCode)
	assert.Equal(t, allowed, r.Header.Get("Access-Control-Allow-Origin"))
	assert.Contains(t, r.Header.Get("Access-Control-Allow-Methods"), http.MethodPost)
	assert.Contains(t, r.Header.Get("Access-Control-Allow-Methods"), http.MethodDelete)
	assert.Equal(t, "Authorization,Content-Type", r.Header.Get("Access-Control-Allow-Headers"))
	assert.Equal(t, "600", r.Header.Get("Access-Control-Max-Age"))
	assert.Empty(t, r.Header.Get("Access-Control-Allow-Credentials"))
	assert.Contains(t, r.Header.Values("Vary"), "Origin")

	for _, o := range []string{other, "https://console.example.com.evil.net", "http://console.example.com"} {
		r = g.preflight("/v1/devices/dev-1/commands", o, http.MethodPost)
		assert.Empty(t, r.Header.Get("Access-Control-Allow-Origin"), "origin %s", o)
		assert.Empty(t, r.Header.Get("Access-Control-Allow-Methods"), "origin %s", o)
	}

	// The request itself (validated against openapi.yaml): the header for
	// the configured origin, on success and on refusal.
	tok := token(t, "cli-cors", auth.RoleClient, "dev-*")
	rep := g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil, "Origin", allowed)
	require.Equal(t, http.StatusOK, rep.Status)
	assert.Equal(t, allowed, rep.Header.Get("Access-Control-Allow-Origin"))
	assert.Equal(t, "Retry-After", rep.Header.Get("Access-Control-Expose-Headers"))
	rep = g.do(http.MethodGet, "/v1/devices/dev-1", "", nil, "Origin", allowed)
	require.Equal(t, http.StatusUnauthorized, rep.Status)
	assert.Equal(t, allowed, rep.Header.Get("Access-Control-Allow-Origin"))
	rep = g.do(http.MethodGet, "/v1/devices/dev-1", tok, nil, "Origin", other)
	require.Equal(t, http.StatusOK, rep.Status)
	assert.Empty(t, rep.Header.Get("Access-Control-Allow-Origin"))

	// Not configured: no CORS header for anyone.
	plain := newGW(t)
	r = plain.preflight("/v1/devices/dev-1/commands", allowed, http.MethodPost)
	assert.Empty(t, r.Header.Get("Access-Control-Allow-Origin"))
	rep = plain.do(http.MethodGet, "/v1/devices/dev-1", tok, nil, "Origin", allowed)
	assert.Empty(t, rep.Header.Get("Access-Control-Allow-Origin"))
}

// TestCORSConfig: GW_CORS_ORIGINS is a comma-separated list of origins;
// anything that is not an origin is refused at start.
func TestCORSConfig(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  []string
		err   bool
	}{
		{"", nil, false},
		{"https://a.example.com, http://localhost:3000,", []string{"https://a.example.com", "http://localhost:3000"}, false},
		{"*", []string{"*"}, false},
		{"https://a.example.com/", nil, true},
		{"a.example.com", nil, true},
		{"ftp://a.example.com", nil, true},
		{"https://*.example.com", nil, true},
	} {
		c, err := parseConfig(nil, func(k string) string {
			return map[string]string{"GW_AUTH_SECRET": testSecret, "GW_CORS_ORIGINS": tt.value}[k]
		}, &bytes.Buffer{})
		require.NoError(t, err)
		err = c.validate()
		if tt.err {
			assert.Error(t, err, "GW_CORS_ORIGINS=%q", tt.value)
			continue
		}
		assert.NoError(t, err, "GW_CORS_ORIGINS=%q", tt.value)
		assert.Equal(t, tt.want, c.CORSOrigins, "GW_CORS_ORIGINS=%q", tt.value)
	}
}
