package demopage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func serve(t *testing.T, method, target string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestServesPage(t *testing.T) {
	for _, target := range []string{"/", "/index.html", "/?access_token=x&topic=a&topic=b"} {
		t.Run(target, func(t *testing.T) {
			res, body := serve(t, http.MethodGet, target)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", res.StatusCode)
			}
			if got, want := res.Header.Get("Content-Type"), "text/html; charset=utf-8"; got != want {
				t.Errorf("Content-Type %q, want %q", got, want)
			}
			if got := res.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", got)
			}
			for _, want := range []string{"<!doctype html>", `import { connect } from "/v1/herald.js"`, "connect({", `id="events"`, "herald.reset", "window.herald"} {
				if !strings.Contains(body, want) {
					t.Errorf("page lacks %q", want)
				}
			}
		})
	}
}

// The page must work with no network: nothing may come from another origin.
func TestPageIsSelfContained(t *testing.T) {
	_, body := serve(t, http.MethodGet, "/")
	for _, bad := range []string{"<script src", "<link", "http://", "https://", "innerHTML"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
}

func TestHead(t *testing.T) {
	res, body := serve(t, http.MethodHead, "/")
	if res.StatusCode != http.StatusOK || body != "" {
		t.Errorf("HEAD: status %d, body %d bytes; want 200 and no body", res.StatusCode, len(body))
	}
}

func TestNotFound(t *testing.T) {
	for _, target := range []string{"/nope", "/index.htm", "/v1/events", "/index.html/x"} {
		if res, _ := serve(t, http.MethodGet, target); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", target, res.StatusCode)
		}
	}
}

func TestMethodNotAllowed(t *testing.T) {
	res, _ := serve(t, http.MethodPost, "/")
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /: status %d, want 405", res.StatusCode)
	}
	if got := res.Header.Get("Allow"); got != "GET, HEAD" {
		t.Errorf("Allow %q, want %q", got, "GET, HEAD")
	}
}
