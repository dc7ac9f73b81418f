package sseedge_test

import (
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/herald-push/herald/sseedge"
)

// get requests path from e with method and headers, and returns the
// response and its body.
func (e *testEdge) get(tb testing.TB, method, path string, header map[string]string) (*http.Response, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, e.url+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return res, body
}

// The edge serves the browser client, byte for byte the files in client/,
// with their types, a validator and caching, and 304 to a browser that has
// the same copy.
func TestClientServed(t *testing.T) {
	e := newTestEdge(t, sseedge.Config{})
	for _, f := range []struct{ path, file, contentType string }{
		{"/v1/herald.js", "client/herald.js", "text/javascript; charset=utf-8"},
		{"/v1/herald.d.ts", "client/herald.d.ts", "application/typescript; charset=utf-8"},
	} {
		t.Run(f.path, func(t *testing.T) {
			want, err := os.ReadFile(f.file)
			if err != nil {
				t.Fatal(err)
			}
			res, body := e.get(t, http.MethodGet, f.path, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("GET: status %d, want 200", res.StatusCode)
			}
			if string(body) != string(want) {
				t.Errorf("GET: body differs from %s (%d bytes, want %d)", f.file, len(body), len(want))
			}
			for k, v := range map[string]string{
				"Content-Type":           f.contentType,
				"Cache-Control":          "public, max-age=300",
				"X-Content-Type-Options": "nosniff",
			} {
				if got := res.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			etag := res.Header.Get("ETag")
			if !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(etag) {
				t.Fatalf("ETag %q, want a quoted content hash", etag)
			}

			res, body = e.get(t, http.MethodGet, f.path, map[string]string{"If-None-Match": etag})
			if res.StatusCode != http.StatusNotModified || len(body) != 0 {
				t.Errorf("GET with If-None-Match: status %d, %d bytes; want 304 and none", res.StatusCode, len(body))
			}
			res, _ = e.get(t, http.MethodGet, f.path, map[string]string{"If-None-Match": `"other"`})
			if res.StatusCode != http.StatusOK {
				t.Errorf("GET with another ETag: status %d, want 200", res.StatusCode)
			}
			res, body = e.get(t, http.MethodHead, f.path, nil)
			if res.StatusCode != http.StatusOK || len(body) != 0 {
				t.Errorf("HEAD: status %d, %d bytes; want 200 and none", res.StatusCode, len(body))
			}
			res, _ = e.get(t, http.MethodPost, f.path, nil)
			if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD, OPTIONS" {
				t.Errorf("POST: status %d, Allow %q; want 405 and GET, HEAD, OPTIONS", res.StatusCode, res.Header.Get("Allow"))
			}
		})
	}
}

// A page of an allowed origin may load the client from the edge as a module
// (a CORS request); another origin gets it without the header, which its
// browser then refuses, as for the stream.
func TestClientCORS(t *testing.T) {
	e := newTestEdge(t, sseedge.Config{AllowedOrigins: []string{"https://app.example"}})
	res, _ := e.get(t, http.MethodGet, "/v1/herald.js", map[string]string{"Origin": "https://app.example"})
	if got := res.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example" {
		t.Errorf("allowed origin: Access-Control-Allow-Origin %q, want https://app.example", got)
	}
	if !slices.Contains(res.Header.Values("Vary"), "Origin") {
		t.Errorf("allowed origin: Vary %q lacks Origin", res.Header.Values("Vary"))
	}
	res, _ = e.get(t, http.MethodGet, "/v1/herald.js", map[string]string{"Origin": "https://evil.example"})
	if got := res.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("other origin: Access-Control-Allow-Origin %q, want none", got)
	}
	res, _ = e.get(t, http.MethodOptions, "/v1/herald.js", map[string]string{"Origin": "https://evil.example"})
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("preflight from another origin: status %d, want 403", res.StatusCode)
	}
}

// herald.d.ts declares what herald.js exports, the client's public members,
// and every option the client reads; and declares nothing herald.js lacks.
func TestClientDeclarations(t *testing.T) {
	js := readString(t, "client/herald.js")
	dts := readString(t, "client/herald.d.ts")

	jsExports := names(js, `(?m)^export (?:async )?(?:function|class|const|let) (\w+)`)
	dtsValues := names(dts, `(?m)^export declare (?:function|class|const) (\w+)`)
	if len(jsExports) == 0 {
		t.Fatal("found no export in herald.js")
	}
	if !slices.Equal(jsExports, dtsValues) {
		t.Errorf("herald.js exports %v; herald.d.ts declares %v", jsExports, dtsValues)
	}
	if strings.Contains(js, "export {") || strings.Contains(js, "export default") {
		t.Error("herald.js exports in a form this test does not read: use `export function|class|const`")
	}

	// The client's public members: methods and getters, not #private ones.
	jsMembers := names(block(t, js, "export class HeraldClient"), `(?m)^  (?:get |async )?([a-zA-Z]\w*)\(`)
	dtsMembers := names(block(t, dts, "export declare class HeraldClient"), `(?m)^  (?:readonly )?([a-zA-Z]\w*)[(:]`)
	jsMembers = slices.DeleteFunc(jsMembers, func(n string) bool { return n == "constructor" })
	dtsMembers = slices.DeleteFunc(dtsMembers, func(n string) bool { return n == "constructor" })
	if !slices.Equal(jsMembers, dtsMembers) {
		t.Errorf("HeraldClient has %v in herald.js, %v in herald.d.ts", jsMembers, dtsMembers)
	}

	// The options: those with defaults, the callbacks, and the others read.
	opts := names(block(t, js, "const DEFAULTS"), `(?m)^  (\w+):`)
	opts = append(opts, names(js, `#call\("(\w+)"`)...)
	opts = append(opts, names(js, `\bo\.(\w+)`)...)
	slices.Sort(opts)
	opts = slices.Compact(opts)
	declared := names(block(t, dts, "export interface HeraldOptions"), `(?m)^  (\w+)\??:`)
	for _, o := range opts {
		if !slices.Contains(declared, o) {
			t.Errorf("herald.js reads option %q, which HeraldOptions does not declare", o)
		}
	}
	if len(opts) < 10 {
		t.Errorf("found only options %v in herald.js", opts)
	}
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// names returns the sorted, distinct first groups of re's matches in s.
func names(s, re string) []string {
	var out []string
	for _, m := range regexp.MustCompile(re).FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// block returns the text from the line that starts with head to the next
// line that is a lone "}" or "});".
func block(t *testing.T, s, head string) string {
	t.Helper()
	i := strings.Index(s, "\n"+head)
	if i < 0 {
		t.Fatalf("no %q", head)
	}
	s = s[i+1:]
	end := regexp.MustCompile(`(?m)^\}\)?;?$`).FindStringIndex(s)
	if end == nil {
		t.Fatalf("%q does not end", head)
	}
	return s[:end[0]]
}
