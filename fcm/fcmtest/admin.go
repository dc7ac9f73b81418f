package fcmtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// adminRoutes adds the emulator's own API, under /emulator/, to mux.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /emulator/messages", func(w http.ResponseWriter, r *http.Request) {
		msgs := s.Messages()
		if tok := r.URL.Query().Get("token"); tok != "" {
			msgs = s.ByToken(tok)
		}
		writeJSON(w, http.StatusOK, nonNil(msgs))
	})
	mux.HandleFunc("DELETE /emulator/messages", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /emulator/attempts", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(s.Attempts(r.URL.Query().Get("token"))))
	})
	mux.HandleFunc("GET /emulator/stats", func(w http.ResponseWriter, r *http.Request) {
		st := s.Stats()
		st.Throttled = nonNil(st.Throttled)
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.faultState())
	})
	mux.HandleFunc("POST /emulator/faults", s.handleAddFaults)
	mux.HandleFunc("DELETE /emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		writeJSON(w, http.StatusOK, s.faultState())
	})
	mux.HandleFunc("DELETE /emulator/faults/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil || !s.RemoveFault(id) {
			writeAdminError(w, http.StatusNotFound, fmt.Errorf("no fault %q", r.PathValue("id")))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// faultState is what GET /emulator/faults shows, and the shape POST takes.
type faultState struct {
	Faults  []Fault `json:"faults"`
	Latency string  `json:"latency"`
	Jitter  string  `json:"jitter"`
	Rate    float64 `json:"rate"`
	Burst   int     `json:"burst"`
}

func (s *Server) faultState() faultState {
	lat, jit := s.Latency()
	rate, burst := s.RateLimit()
	return faultState{Faults: nonNil(s.Faults()), Latency: lat.String(), Jitter: jit.String(), Rate: rate, Burst: burst}
}

// faultUpdate is a POST /emulator/faults body: faults to add, and the
// settings to change. An absent setting stays as it is.
type faultUpdate struct {
	Faults  []Fault  `json:"faults"`
	Latency *string  `json:"latency"`
	Jitter  *string  `json:"jitter"`
	Rate    *float64 `json:"rate"`
	Burst   *int     `json:"burst"`
}

// handleAddFaults applies a faultUpdate, or a single fault object, all or
// nothing, and answers with the resulting state.
func (s *Server) handleAddFaults(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, err)
		return
	}
	var probe map[string]json.RawMessage
	if json.Unmarshal(body, &probe) == nil && probe["code"] != nil {
		body = []byte(`{"faults":[` + string(body) + `]}`)
	}
	var u faultUpdate
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		writeAdminError(w, http.StatusBadRequest, err)
		return
	}
	lat, jit := s.Latency()
	if lat, err = durationSetting("latency", u.Latency, lat); err == nil {
		jit, err = durationSetting("jitter", u.Jitter, jit)
	}
	if err == nil {
		err = validateUpdate(u)
	}
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, err)
		return
	}
	for _, f := range u.Faults {
		if _, err := s.AddFault(f); err != nil {
			panic(err) // validated above
		}
	}
	if u.Latency != nil || u.Jitter != nil {
		s.SetLatency(lat, jit)
	}
	if u.Rate != nil || u.Burst != nil {
		rate, burst := s.RateLimit()
		if u.Rate != nil {
			rate, burst = *u.Rate, 0
		}
		if u.Burst != nil {
			burst = *u.Burst
		}
		s.SetRateLimit(rate, burst)
	}
	writeJSON(w, http.StatusOK, s.faultState())
}

func validateUpdate(u faultUpdate) error {
	for _, f := range u.Faults {
		if err := f.validate(); err != nil {
			return err
		}
	}
	if u.Rate != nil && *u.Rate < 0 || u.Burst != nil && *u.Burst < 0 {
		return errors.New("negative rate limit")
	}
	return nil
}

// durationSetting parses a setting if it is given, and keeps cur if not.
func durationSetting(name string, v *string, cur time.Duration) (time.Duration, error) {
	if v == nil {
		return cur, nil
	}
	d, err := parseDuration(name, *v)
	if err == nil && d < 0 {
		err = fmt.Errorf("%s: negative", name)
	}
	return d, err
}

func writeAdminError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
