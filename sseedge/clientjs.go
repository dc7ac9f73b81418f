package sseedge

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"strconv"
	"time"
)

// The browser client (client/herald.js, docs/browser-client.md) and its
// TypeScript declarations, served at /v1/herald.js and /v1/herald.d.ts.
var (
	//go:embed client/herald.js
	clientJS []byte
	//go:embed client/herald.d.ts
	clientDTS []byte
)

// clientMaxAge is how long a browser may use its copy of the client without
// asking again: a new release reaches pages within it. After it, the ETag
// makes asking cheap.
const clientMaxAge = 5 * time.Minute

// clientFile is one file of the client, ready to serve.
type clientFile struct {
	name, contentType, etag string
	body                    []byte
}

func newClientFile(name, contentType string, body []byte) clientFile {
	sum := sha256.Sum256(body)
	return clientFile{name: name, contentType: contentType, body: body,
		etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
}

// handleClientFile serves f to GET and HEAD, under the edge's CORS policy:
// a page of an allowed origin may load the module from the edge.
func (s *Server) handleClientFile(f clientFile) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.cors(w, r) {
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD, OPTIONS")
			s.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "public, max-age="+strconv.Itoa(int(clientMaxAge.Seconds())))
		h.Set("ETag", f.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		// ServeContent answers If-None-Match with 304, HEAD, and ranges.
		http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.body))
	}
}
