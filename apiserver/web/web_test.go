package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Result()
}

func TestHandler(t *testing.T) {
	h := Handler()
	for _, c := range []struct {
		path, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script src="assets/dashboard.js"`},
		{"/assets/dashboard.js", "text/javascript; charset=utf-8", `"use strict"`},
		{"/assets/dashboard.css", "text/css; charset=utf-8", ":root"},
		{"/assets/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8", "uPlot"},
		{"/assets/uplot/uPlot.min.css", "text/css; charset=utf-8", ".uplot"},
		{"/assets/uplot/LICENSE", "text/plain; charset=utf-8", "Leon Sorokin"},
	} {
		resp := get(t, h, http.MethodGet, c.path)
		body, _ := io.ReadAll(resp.Body)
		require.Equal(t, http.StatusOK, resp.StatusCode, c.path)
		assert.Equal(t, c.ctype, resp.Header.Get("Content-Type"), c.path)
		assert.Contains(t, string(body), c.contains, c.path)
		assert.Equal(t, ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"), c.path)
		assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), c.path)
		assert.Equal(t, "no-cache", resp.Header.Get("Cache-Control"), c.path)

		etag := resp.Header.Get("ETag")
		require.NotEmpty(t, etag, c.path)
		again := get(t, h, http.MethodGet, c.path, "If-None-Match", etag)
		assert.Equal(t, http.StatusNotModified, again.StatusCode, c.path)
	}

	head := get(t, h, http.MethodHead, "/")
	assert.Equal(t, http.StatusOK, head.StatusCode)
	for _, p := range []string{"/favicon.ico", "/assets/", "/assets/nope.js", "/assets/../web.go", "/assets//dashboard.js", "/index.html", "/static/index.html"} {
		assert.Equal(t, http.StatusNotFound, get(t, h, http.MethodGet, p).StatusCode, p)
	}
	assert.Equal(t, http.StatusMethodNotAllowed, get(t, h, http.MethodPost, "/").StatusCode)
}

// The page loads nothing from elsewhere: every src and href is relative
// to this origin, and the script fetches only relative paths.
func TestNoOutsideResources(t *testing.T) {
	page := string(files["index.html"].body)
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		u := m[1]
		assert.False(t, strings.Contains(u, "//") || strings.HasPrefix(u, "/"), "index.html refers to %q", u)
		if strings.HasPrefix(u, "assets/") {
			assert.Contains(t, files, strings.TrimPrefix(u, "assets/"), "index.html refers to a missing file")
		}
	}
	for _, name := range []string{"index.html", "dashboard.js", "dashboard.css", "uplot/uPlot.min.css"} {
		for _, u := range regexp.MustCompile(`https?://[^\s"'<>)]+`).FindAllString(string(files[name].body), -1) {
			t.Errorf("%s mentions %s", name, u)
		}
	}
	js := string(files["dashboard.js"].body)
	assert.NotContains(t, js, "innerHTML", "values are written with textContent")
	assert.NotContains(t, js, "localStorage", "the token lives in sessionStorage only")
	assert.NotContains(t, js, "location.search", "the token is never read from the query string")
}

func TestFiles(t *testing.T) {
	assert.Equal(t, []string{
		"dashboard.css", "dashboard.js", "index.html",
		"uplot/LICENSE", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css",
	}, Files())
}
