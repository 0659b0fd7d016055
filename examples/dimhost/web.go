package main

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// webFiles is the example host's web UI (web/): a single page that stands
// in for Dim's React UI and renders every contribution point of the UI
// document. Committed as plain files, so `make demo` needs no network and
// no build step.
//
//go:embed web
var webFiles embed.FS

// hostCSP is the policy of the host's own pages: nothing from elsewhere,
// plugin pages only as frames from this origin (which the middleware
// answers with their sandbox CSP).
const hostCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// newWebHandler serves the web UI next to api (the API wrapped in the
// dimplugd middleware): /api/ goes to api, /web/ are the UI's files, and
// any other GET is the single page, which routes by its path.
func newWebHandler(api http.Handler) http.Handler {
	sub, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	files := http.StripPrefix("/web/", http.FileServer(http.FS(sub)))
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/api/"):
			api.ServeHTTP(w, r)
			return
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", hostCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-cache")
		if strings.HasPrefix(r.URL.Path, "/web/") {
			files.ServeHTTP(w, r)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.Write(index)
	})
}
