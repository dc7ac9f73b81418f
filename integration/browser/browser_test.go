package browser_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/herald-push/herald/integration/browser"
	"github.com/herald-push/herald/sseedge/demopage"
)

var screenshotDir = flag.String("screenshot-dir", "", "keep the demo page's screenshot in this directory")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeEdge is a stand-in for the SSE edge that scripts one reconnect: the
// first stream sends events 1 and 2 and ends when drop closes; a reconnect
// that resumes after event 2 gets event 3. It records the acknowledgements
// it is sent.
type fakeEdge struct {
	drop chan struct{} // closed to end the first stream
	done chan struct{} // closed when the test ends, to release every stream

	mu      sync.Mutex
	lastIDs []string     // the Last-Event-ID header of each request, in order
	queries []url.Values // the query of each request
	auths   []string     // the Authorization header of each request
	acked   []string     // the ids of every POST /v1/ack, in order
}

// clientMux serves the edge's browser client, from the source tree, at
// /v1/herald.js, and the demo page at /, as an edge does.
func clientMux(t *testing.T) *http.ServeMux {
	t.Helper()
	js, err := os.ReadFile("../../sseedge/client/herald.js")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/herald.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(js)
	})
	mux.Handle("/", demopage.Handler())
	return mux
}

// ack serves POST /v1/ack: it records the ids, and acknowledges them all.
func (f *fakeEdge) ack(w http.ResponseWriter, r *http.Request) {
	var body struct{ IDs []string }
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.acked = append(f.acked, body.IDs...)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"acked":%d,"late":0,"unknown":0}`, len(body.IDs))
}

func newFakeEdge() *fakeEdge {
	return &fakeEdge{drop: make(chan struct{}), done: make(chan struct{})}
}

func (f *fakeEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	last := r.Header.Get("Last-Event-ID")
	f.mu.Lock()
	f.lastIDs = append(f.lastIDs, last)
	f.queries = append(f.queries, r.URL.Query())
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	f.mu.Unlock()

	var wire string
	var end <-chan struct{}
	switch last {
	case "":
		// The data is markup, which the page must show as text.
		wire = "retry: 500\n\n" +
			"id: 1\nevent: hello\ndata: <b>hi</b>\n\n" +
			": hb\n\n" +
			"id: 2\ndata: second\n\n"
		end = f.drop
	case "2":
		wire = "retry: 500\n\nid: 3\nevent: update\ndata: third\n\n"
	default:
		http.Error(w, "unexpected Last-Event-ID "+last, http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	io.WriteString(w, wire)
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	select {
	case <-end:
	case <-f.done:
	case <-r.Context().Done():
	}
}

func (f *fakeEdge) seen() (lastIDs []string, queries []url.Values, auths []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lastIDs), slices.Clone(f.queries), slices.Clone(f.auths)
}

func (f *fakeEdge) ackedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.acked)
}

type event struct {
	ID    string `json:"id"`
	Event string `json:"event"`
	Data  string `json:"data"`
}

type item struct {
	ID    string `json:"id"`
	Event string `json:"event"`
	Text  string `json:"text"`
}

const itemsJS = `Array.from(document.querySelectorAll("#events li"),
	li => ({id: li.dataset.id, event: li.dataset.event, text: li.textContent}))`

// TestDemoPageResumesAfterReconnect runs the demo page (and so herald.js) in
// Chromium against a scripted edge: it must send the token in the
// Authorization header, show every event as text, reconnect when the stream
// ends, resume with Last-Event-ID, show no event twice, and acknowledge
// each.
func TestDemoPageResumesAfterReconnect(t *testing.T) {
	edge := newFakeEdge()
	mux := clientMux(t)
	mux.Handle("/v1/events", edge)
	mux.HandleFunc("/v1/ack", edge.ack)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	// Registered after srv, so it runs before srv.Close, which waits for
	// every open stream.
	t.Cleanup(func() { close(edge.done) })

	b := browser.Start(t)
	const token = "s3cret-token"
	p := b.Open(t, srv.URL+"/?access_token="+token+"&topic=news&topic=sports")

	browser.WaitFor(t, p, `window.herald.events.length == 2`, 5*time.Second)
	want := []event{{"1", "hello", "<b>hi</b>"}, {"2", "message", "second"}}
	if got := browser.Eval[[]event](t, p, `window.herald.events`); !slices.Equal(got, want) {
		t.Fatalf("window.herald.events = %+v, want %+v", got, want)
	}
	checkItems(t, p, want)
	if n := browser.Eval[int](t, p, `document.querySelectorAll("#events b").length`); n != 0 {
		t.Errorf("event data was rendered as HTML: %d <b> elements in the list", n)
	}

	_, queries, auths := edge.seen()
	if q := queries[0]; q.Has("access_token") || !slices.Equal(q["topic"], []string{"news", "sports"}) {
		t.Errorf("the edge got the query %v, want both topics and no token", q)
	}
	if auths[0] != "Bearer "+token {
		t.Errorf("the edge got Authorization %q, want the page's token as a bearer token", auths[0])
	}
	shown := browser.Eval[string](t, p, `document.getElementById("url").textContent`)
	if strings.Contains(shown, token) || !strings.Contains(shown, "/v1/events?") || !strings.Contains(shown, "topic=sports") {
		t.Errorf("the page shows the URL %q, want /v1/events with the topics and without the token", shown)
	}

	close(edge.drop)
	browser.WaitFor(t, p, `window.herald.opens == 2`, 5*time.Second)
	browser.WaitFor(t, p, `window.herald.events.length >= 3`, 5*time.Second)
	if lastIDs, _, _ := edge.seen(); !slices.Equal(lastIDs, []string{"", "2"}) {
		t.Errorf("the edge got Last-Event-ID %q, want %q", lastIDs, []string{"", "2"})
	}
	want = append(want, event{"3", "update", "third"})
	if got := browser.Eval[[]event](t, p, `window.herald.events`); !slices.Equal(got, want) {
		t.Fatalf("window.herald.events = %+v, want %+v", got, want)
	}
	checkItems(t, p, want)
	browser.WaitFor(t, p, `window.herald.acked == 3`, 5*time.Second)
	if ids := edge.ackedIDs(); !slices.Equal(ids, []string{"1", "2", "3"}) {
		t.Errorf("the page acknowledged %q, want 1, 2 and 3 once each", ids)
	}

	type status struct {
		Opens, Errors, Resets int
		State                 string
	}
	got := browser.Eval[status](t, p,
		`({Opens: herald.opens, Errors: herald.errors, Resets: herald.resets, State: herald.state})`)
	// A stream the edge ended is no error: the client comes back after retry:.
	if want := (status{Opens: 2, Errors: 0, Resets: 0, State: "open"}); got != want {
		t.Errorf("page status %+v, want %+v", got, want)
	}

	dir := *screenshotDir
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "demopage.png")
	p.Screenshot(t, shot)
	if png, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot %s is not a PNG (err %v)", shot, err)
	}
}

// checkItems checks that the list on the page shows exactly the events want,
// in order, each with its name and data.
func checkItems(t *testing.T, p *browser.Page, want []event) {
	t.Helper()
	items := browser.Eval[[]item](t, p, itemsJS)
	if len(items) != len(want) {
		t.Fatalf("the page lists %d events, want %d: %+v", len(items), len(want), items)
	}
	for i, it := range items {
		w := want[i]
		if it.ID != w.ID || it.Event != w.Event || !strings.Contains(it.Text, w.Event) || !strings.Contains(it.Text, w.Data) {
			t.Errorf("list item %d = %+v, want id %q, event %q and text with %q", i, it, w.ID, w.Event, w.Data)
		}
	}
}

// TestDemoPageNamedEventsAndReset checks that the page shows events of any
// name (herald.js has no per-name listeners, unlike EventSource), and
// herald.reset, which it counts and explains.
func TestDemoPageNamedEventsAndReset(t *testing.T) {
	done := make(chan struct{})
	mux := clientMux(t)
	mux.HandleFunc("/v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "id: a\nevent: custom\ndata: one\n\n"+
			"id: b\nevent: unlistened\ndata: two\n\n"+
			"id: c\nevent: herald.reset\ndata: {\"reason\":\"history_gap\"}\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-done:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })

	p := browser.Start(t).Open(t, srv.URL+"/index.html?access_token=x")
	browser.WaitFor(t, p, `herald.resets == 1`, 5*time.Second)
	want := []event{{"a", "custom", "one"}, {"b", "unlistened", "two"},
		{"c", "herald.reset", `{"reason":"history_gap","streams":[]}`}}
	if got := browser.Eval[[]event](t, p, `herald.events`); !slices.Equal(got, want) {
		t.Fatalf("window.herald.events = %+v, want %+v", got, want)
	}
	checkItems(t, p, want)
	if notice := browser.Eval[string](t, p, `document.getElementById("notice").textContent`); !strings.Contains(notice, "history_gap") {
		t.Errorf("the reset notice %q does not give the reason", notice)
	}
}

// TestClientReadsWireFormat feeds herald.js, through the demo page, the
// event-stream format's corners, written in pieces that cut a CRLF and a
// UTF-8 character in two: a byte order mark, CRLF and CR line ends, a
// comment, a data field without a colon or a space, and multi-line data.
func TestClientReadsWireFormat(t *testing.T) {
	done := make(chan struct{})
	edge := newFakeEdge()
	mux := clientMux(t)
	mux.HandleFunc("/v1/ack", edge.ack)
	mux.HandleFunc("/v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for _, piece := range []string{
			"\ufeffretry: 500\r\n\r\nid: 1\r\nevent: multi\r\ndata: line1\r",
			"\ndata: line2\r\n\r\n: comment\r\rid: 2\rdata:no-space\r\rid: 3\ndata\n\nid: 4\nevent: sp",
			"lit\ndata: \xc3",
			"\xa9\n\n",
		} {
			io.WriteString(w, piece)
			if rc.Flush() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond) // so that the pieces arrive apart
		}
		select {
		case <-done:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })

	p := browser.Start(t).Open(t, srv.URL+"/?access_token=x")
	browser.WaitFor(t, p, `herald.events.length == 4`, 5*time.Second)
	want := []event{{"1", "multi", "line1\nline2"}, {"2", "message", "no-space"}, {"3", "message", ""}, {"4", "split", "é"}}
	if got := browser.Eval[[]event](t, p, `herald.events`); !slices.Equal(got, want) {
		t.Fatalf("window.herald.events = %+v, want %+v", got, want)
	}
}
