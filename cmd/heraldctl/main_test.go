package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/router"
)

// serveRouter serves a router without authentication on the shared Redis,
// under a prefix of the test's own.
func serveRouter(t *testing.T) *testenv.Server {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) })
	return srv
}

func TestNotify(t *testing.T) {
	srv := serveRouter(t)

	var stdout, stderr bytes.Buffer
	code := run([]string{"notify", "-addr", srv.Addr, "-user", "zoe", "-event", "e", "-data", "hi",
		"-idempotency-key", "k", "-title", "T", "-high-priority"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var resp struct {
		NotificationID string `json:"notificationId"`
		Route          string `json:"route"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil || resp.NotificationID == "" || resp.Route != "ROUTE_OFFLINE" {
		t.Fatalf("output %q (%v): want JSON with an id and ROUTE_OFFLINE", stdout.String(), err)
	}

	stdout.Reset()
	code = run([]string{"notify", "-addr", srv.Addr, "-user", ""}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "InvalidArgument: user_id") {
		t.Fatalf("empty user: exit %d, stderr %q; want 1 and InvalidArgument naming user_id", code, stderr.String())
	}
	if code := run([]string{"bogus"}, &stdout, &stderr); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
}
