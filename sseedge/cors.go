package sseedge

import (
	"net/http"
	"slices"
)

// cors applies the allowed origins to r. It answers preflight requests
// itself, and reports whether the handler should go on.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	allowed := origin != "" && (slices.Contains(s.cfg.AllowedOrigins, "*") || slices.Contains(s.cfg.AllowedOrigins, origin))
	if allowed {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	}
	if r.Method != http.MethodOptions {
		return true
	}
	if !allowed {
		s.refuse(w, http.StatusForbidden, "origin_not_allowed", "this origin may not read the event stream")
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control, Content-Type")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return false
}
