package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
)

// runOK runs heraldctl and fails the test unless it exits 0.
func runOK(tb testing.TB, args ...string) string {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		tb.Fatalf("heraldctl %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

func TestPresenceCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-90 * time.Second).Truncate(time.Millisecond)
	if err := reg.Lease(ctx,
		presence.Conn{User: "zoe", ID: "c-old", Edge: "edge-a", Since: since},
		presence.Conn{User: "zoe", ID: "c-new", Edge: "edge-b", Since: since.Add(time.Minute)},
		presence.Conn{User: "yan", ID: "c-yan", Edge: "edge-a", Since: since},
	); err != nil {
		t.Fatal(err)
	}
	devs, err := devices.New(rdb, devices.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	const android, web = "fcm-token-android-0123456789-A1B2C3", "fcm-token-web-9876543210-D4E5F6"
	for token, platform := range map[string]string{android: "android", web: "web"} {
		if _, _, err := devs.Register(ctx, "zoe", token, platform); err != nil {
			t.Fatal(err)
		}
	}
	flags := []string{"-redis-addr", testenv.RedisAddr(), "-redis-prefix", prefix}

	out := runOK(t, append([]string{"presence", "zoe"}, flags...)...)
	words := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"user zoe: online, 2 connection(s), 2 device(s) (android 1, web 1)",
		"CONNECTION EDGE CONNECTED FOR LEASE EXPIRES IN",
		"c-old edge-a " + since.UTC().Format(time.RFC3339) + " 1m3", // 1m30s, give or take the run time
		"c-new edge-b",
		"…A1B2C3 android",
		"…D4E5F6 web",
	} {
		if !strings.Contains(words, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "c-yan") || strings.Contains(out, "fcm-token") {
		t.Errorf("output shows another user's connection or a whole token:\n%s", out)
	}
	if strings.Index(out, "c-old") > strings.Index(out, "c-new") {
		t.Errorf("connections not oldest first:\n%s", out)
	}

	// The user may come after the flags, too.
	var rep struct {
		User        string
		Connections []struct {
			ID, Edge       string
			Since, Expires time.Time
		}
		Devices []struct {
			Platform     string
			RegisteredAt time.Time
			TokenSuffix  string
		}
		Platforms map[string]int
	}
	out = runOK(t, append(append([]string{"presence"}, flags...), "-json", "zoe")...)
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	if rep.User != "zoe" || len(rep.Connections) != 2 || rep.Connections[0].ID != "c-old" ||
		!rep.Connections[0].Since.Equal(since) || !rep.Connections[0].Expires.After(time.Now()) ||
		len(rep.Devices) != 2 || rep.Platforms["android"] != 1 || rep.Platforms["web"] != 1 {
		t.Errorf("JSON %s; want zoe's 2 connections, oldest first, and 2 devices", out)
	}
	for _, d := range rep.Devices {
		if len(d.TokenSuffix) != 6 || d.RegisteredAt.IsZero() {
			t.Errorf("device %+v: want the token's last 6 characters and a registration time", d)
		}
	}

	out = runOK(t, append([]string{"presence", "nobody"}, flags...)...)
	if !strings.Contains(out, "user nobody: offline, 0 connection(s), 0 device(s)") {
		t.Errorf("unknown user: %q", out)
	}
	var stdout, stderr bytes.Buffer
	if code := run(append([]string{"presence"}, flags...), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "USER") {
		t.Errorf("no user: exit %d, %q; want 1 and the usage", code, stderr.String())
	}
}

func TestEdgesCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	flags := []string{"-redis-addr", testenv.RedisAddr(), "-redis-prefix", prefix}
	if out := runOK(t, append([]string{"edges"}, flags...)...); !strings.Contains(out, "0 edge(s), 0 connection(s)") {
		t.Errorf("no edges: %q", out)
	}

	now := time.Now()
	for _, e := range []presence.Edge{
		{ID: "edge-b", Version: "v1.4.0+0123456789ab", Addr: "10.0.0.2:8080", Started: now.Add(-2 * time.Hour),
			Connections: 1500, Draining: true, Updated: now.Add(-3 * time.Second)},
		{ID: "edge-a", Version: "devel", Addr: "10.0.0.1:8080", Started: now.Add(-time.Hour), Connections: 20, Updated: now},
	} {
		if err := reg.Announce(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	out := runOK(t, append([]string{"edges"}, flags...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a heading, 2 edges and a total:\n%s", out)
	}
	for i, want := range []string{
		"EDGE STATE CONNECTIONS VERSION ADDRESS STARTED UP LAST SEEN",
		"edge-a serving 20 devel 10.0.0.1:8080 " + now.Add(-time.Hour).UTC().Format(time.RFC3339) + " 1h0m",
		"edge-b draining 1500 v1.4.0+0123456789ab 10.0.0.2:8080 " + now.Add(-2*time.Hour).UTC().Format(time.RFC3339) + " 2h0m",
		"2 edge(s), 1520 connection(s)",
	} {
		if got := strings.Join(strings.Fields(lines[i]), " "); !strings.HasPrefix(got, want) {
			t.Errorf("line %d = %q, want it to start %q", i, got, want)
		}
	}

	var edges []presence.Edge
	out = runOK(t, append([]string{"edges", "-json"}, flags...)...)
	if err := json.Unmarshal([]byte(out), &edges); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	if len(edges) != 2 || edges[0].ID != "edge-a" || edges[1].Connections != 1500 || !edges[1].Draining ||
		!edges[1].Expires.After(now) {
		t.Errorf("JSON %s; want edge-a, then edge-b draining with 1500 connections and an expiry", out)
	}
}
