// Package demopage serves a self-contained web page that connects to Herald's
// SSE edge with Herald's browser client (/v1/herald.js, served by the edge)
// and lists the events it gets, to try an edge by hand and to test the
// browser side of the protocol end to end.
package demopage

import (
	"bytes"
	_ "embed"
	"net/http"
	"time"
)

// page is the whole demo: HTML, CSS and script in one file, so that it needs
// nothing from the network but the edge's own /v1/herald.js.
//
//go:embed index.html
var page []byte

// Handler returns a handler that serves the demo page at / and /index.html,
// and 404 at every other path. The page loads /v1/herald.js from its own
// origin, which must be an edge, and opens /v1/events there with the
// access_token and topic parameters of its own URL.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/index.html" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		// The page is tiny and changes with the binary: always revalidate.
		h.Set("Cache-Control", "no-cache")
		// The page's URL carries the access token; keep it out of Referer.
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		// ServeContent answers HEAD and sets Content-Length.
		http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(page))
	})
}
