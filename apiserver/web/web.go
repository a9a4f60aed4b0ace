// Package web is the apiserver's operations dashboard: one HTML page, its
// script and style sheet, and the uPlot chart library, embedded in the
// binary. Nothing is built and nothing is loaded from elsewhere at run
// time: the files in static/ are served as they are.
//
// The page polls GET /v1/stats every 2 s and keeps the history of the
// queue depths in the browser for its chart; it lists GET /v1/dead with a
// replay button per command (POST /v1/dead/{id}/replay), and looks up one
// command with GET /v1/commands/{id}?client=. It takes the operator token
// from its sign-in field or from the URL fragment (/#token=…, which a
// browser never sends to a server; the page removes it from the address
// bar), keeps it in sessionStorage (gone with the tab) and sends it as
// Authorization: Bearer. A query string token is ignored.
//
// Paths: the page is "/" and the other files are under AssetPrefix. Every
// answer carries a Content-Security-Policy that allows only this origin,
// so the page cannot load or send anything elsewhere.
//
// uPlot is the npm package uplot 1.6.32 (MIT, static/uplot/LICENSE). To
// update it: `npm pack uplot@<version>` in a scratch folder, copy
// dist/uPlot.iife.min.js, dist/uPlot.min.css and LICENSE from the tarball
// into static/uplot, and change the version here.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"maps"
	"mime"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"
)

// AssetPrefix is the path under which the page's files are served.
const AssetPrefix = "/assets/"

// ContentSecurityPolicy is sent with every file: this origin only, no
// inline script, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

//go:embed static
var static embed.FS

// file is one embedded file, ready to serve.
type file struct {
	body  []byte
	ctype string
	etag  string
}

var files = load()

// load reads the embedded files once, with their types and ETags.
func load() map[string]file {
	out := map[string]file{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = "text/plain; charset=utf-8"
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "static/")] = file{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		panic("web: cannot read the embedded files: " + err.Error())
	}
	return out
}

// Handler serves the dashboard: GET or HEAD "/" is the page, AssetPrefix
// + name is static/name; anything else is 404. Files are revalidated with
// their ETag (Cache-Control: no-cache), so a new binary's files are seen
// at once.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := "index.html"
		if r.URL.Path != "/" {
			rest, ok := strings.CutPrefix(r.URL.Path, AssetPrefix)
			if !ok || rest == "" || rest != path.Clean(rest) {
				http.NotFound(w, r)
				return
			}
			name = rest
		}
		f, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	})
}

// Files lists the names of the embedded files (relative to static/),
// sorted, for tests and tools.
func Files() []string {
	return slices.Sorted(maps.Keys(files))
}
