package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/router"
)

// TestDeviceCommand: device register needs -platform, one of android, ios
// or web, and records the device under it; unregister does without.
func TestDeviceCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	devs, err := devices.New(rdb, devices.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis) }).Addr
	var stdout, stderr bytes.Buffer
	exit := func(args ...string) int {
		stdout.Reset()
		stderr.Reset()
		return run(append(args, "-addr", addr), &stdout, &stderr)
	}
	listed := func() []devices.Device {
		t.Helper()
		list, err := devs.List(ctx, "zoe")
		if err != nil {
			t.Fatal(err)
		}
		return list
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string // in the error
	}{
		{"no platform", nil, []string{"needs -platform android, ios or web", "usage: heraldctl device register"}},
		{"empty platform", []string{"-platform", ""}, []string{"needs -platform android, ios or web"}},
		{"unknown platform", []string{"-platform", "blackberry"}, []string{`-platform "blackberry": must be android, ios or web`}},
	} {
		args := append([]string{"device", "register", "-user", "zoe", "-token", "t-ios"}, tc.args...)
		if code := exit(args...); code != 1 || !containsAll(stderr.String(), tc.want) {
			t.Errorf("%s: exit %d, %q; want 1 and %q", tc.name, code, stderr.String(), tc.want)
		}
	}
	if list := listed(); len(list) != 0 {
		t.Fatalf("refused registrations recorded %v", list)
	}

	if code := exit("device", "register", "-user", "zoe", "-token", "t-ios", "-platform", "ios"); code != 0 || !strings.Contains(stdout.String(), "devices") {
		t.Fatalf("register -platform ios: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	if code := exit("device", "register", "-user", "zoe", "-token", "t-web", "-platform", "WEB"); code != 0 {
		t.Fatalf("register -platform WEB: exit %d, %q", code, stderr.String())
	}
	got := map[string]string{}
	for _, d := range listed() {
		got[d.Token] = d.Platform
	}
	if len(got) != 2 || got["t-ios"] != "ios" || got["t-web"] != "web" {
		t.Fatalf("registered %v, want t-ios on ios and t-web on web", got)
	}

	if code := exit("device", "unregister", "-user", "zoe", "-token", "t-ios"); code != 0 {
		t.Fatalf("unregister without -platform: exit %d, %q", code, stderr.String())
	}
	if list := listed(); len(list) != 1 || list[0].Token != "t-web" {
		t.Fatalf("after unregistering t-ios: %v, want t-web alone", list)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
