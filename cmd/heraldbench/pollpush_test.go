package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
)

// The account endpoint answers from Redis, with a JSON error otherwise.
func TestAccountHandler(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, prefix+"{u:ann}", `{"cash":1}`, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(accountHandler(rdb, prefix))
	defer srv.Close()
	for _, tc := range []struct {
		query, body string
		code        int
	}{
		{"?user=ann", `{"cash":1}`, http.StatusOK},
		{"?user=bob", `{"error":"no such account"}`, http.StatusNotFound},
		{"", `{"error":"user is required"}`, http.StatusBadRequest},
	} {
		resp, err := http.Get(srv.URL + "/v1/account" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.code || strings.TrimSpace(string(body)) != tc.body {
			t.Errorf("GET %s: %d %s, want %d %s", tc.query, resp.StatusCode, body, tc.code, tc.body)
		}
	}
}

// A child's poll clients each poll their own user, and every request
// answered is counted once.
func TestPollClients(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Query().Get("user")]++
		mu.Unlock()
		_, _ = w.Write([]byte("{}"))
	}))
	defer srv.Close()
	r := poll(command{Op: "poll", Edge: srv.URL + "/v1/account?user=", Prefix: "p-", First: 10, Count: 5,
		Every: 50 * time.Millisecond, For: 500 * time.Millisecond})
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range seen {
		total += n
	}
	if r.Failed != 0 || r.Error != "" {
		t.Errorf("failed %d: %s", r.Failed, r.Error)
	}
	if int(r.Received) != total || total == 0 {
		t.Errorf("reported %d answered, server saw %d", r.Received, total)
	}
	for i := 10; i < 15; i++ {
		if u := "p-" + strconv.Itoa(i); seen[u] == 0 {
			t.Errorf("user %s never polled (saw %v)", u, seen)
		}
	}
	if len(seen) != 5 {
		t.Errorf("polled users %v, want p-10 .. p-14", seen)
	}
}
