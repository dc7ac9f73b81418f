package devices_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/integration/testenv"
)

func TestDevices(t *testing.T) {
	t.Parallel()
	d, _ := newRegistry(t)
	ctx := context.Background()
	for i, tok := range []string{"tok-a", "tok-b", "tok-c", "tok-a", "tok-d"} {
		n, evicted, err := d.Register(ctx, "ivy", tok, "android")
		if err != nil {
			t.Fatal(err)
		}
		wantEvicted := 0
		if i == 4 {
			wantEvicted = 1 // tok-b: tok-a was refreshed at i == 3
		}
		if evicted != wantEvicted || n != min(i+1, 3) {
			t.Fatalf("register %s: %d devices, %d evicted", tok, n, evicted)
		}
		time.Sleep(2 * time.Millisecond) // registration times are in ms
	}
	got, err := d.List(ctx, "ivy")
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	for _, dv := range got {
		tokens = append(tokens, dv.Token)
		if dv.Platform != "android" || dv.RegisteredAt.IsZero() {
			t.Fatalf("device %+v lacks its platform or time", dv)
		}
	}
	if len(tokens) != 3 || tokens[0] != "tok-d" || tokens[1] != "tok-a" || tokens[2] != "tok-c" {
		t.Fatalf("devices %v, want [tok-d tok-a tok-c] (newest first, tok-b evicted)", tokens)
	}
	if n, err := d.Unregister(ctx, "ivy", "tok-a", "nope"); err != nil || n != 1 {
		t.Fatalf("unregister: %d, %v; want 1 removed", n, err)
	}
	many, err := d.ListMany(ctx, "ivy", "nobody", "ivy")
	if err != nil || len(many["ivy"]) != 2 || len(many["nobody"]) != 0 {
		t.Fatalf("ListMany: %v, %v", many, err)
	}
	for _, bad := range []struct{ user, token, platform string }{
		{"", "t", "ios"}, {"u", "", "ios"}, {"u", "has space", "ios"}, {"u", "t", "symbian"},
	} {
		if _, _, err := d.Register(ctx, bad.user, bad.token, bad.platform); !errors.Is(err, devices.ErrInvalid) {
			t.Errorf("Register(%q, %q, %q) = %v, want ErrInvalid", bad.user, bad.token, bad.platform, err)
		}
	}
}

// TestQueue reads devices through a caller's pipeline: the same tokens and
// platforms as List, after evictions and removals, and none for a user
// without devices.
func TestQueue(t *testing.T) {
	t.Parallel()
	d, rdb := newRegistry(t)
	ctx := context.Background()
	for _, dv := range []struct{ token, platform string }{
		{"tok-a", "android"}, {"tok-b", "ios"}, {"tok-c", "web"}, {"tok-d", "ios"}, {"tok-b", "android"},
	} {
		if _, _, err := d.Register(ctx, "kim", dv.token, dv.platform); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // registration times are in ms
	}
	if _, err := d.Unregister(ctx, "kim", "tok-c"); err != nil {
		t.Fatal(err)
	}
	var kim, nobody devices.Lookup
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		kim, nobody = d.Queue(ctx, p, "kim"), d.Queue(ctx, p, "nobody")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := kim.Devices()
	if err != nil {
		t.Fatal(err)
	}
	listed, err := d.List(ctx, "kim")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tok-d": "ios", "tok-b": "android"} // tok-a evicted, tok-c removed
	if len(got) != len(want) || len(listed) != len(want) {
		t.Fatalf("Queue read %v and List %v; want %v", got, listed, want)
	}
	for i := range got {
		if want[got[i].Token] != got[i].Platform || want[listed[i].Token] != listed[i].Platform {
			t.Fatalf("Queue read %v and List %v; want %v", got, listed, want)
		}
	}
	if ds, err := nobody.Devices(); err != nil || len(ds) != 0 {
		t.Fatalf("a user without devices: %v, %v", ds, err)
	}
}

// newRegistry is a registry of at most 3 devices a user, on the shared
// Redis under a prefix of the test's own, and its client.
func newRegistry(t *testing.T) (*devices.Registry, *redis.Client) {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	d, err := devices.New(rdb, devices.Config{Prefix: prefix, MaxPerUser: 3})
	if err != nil {
		t.Fatal(err)
	}
	return d, rdb
}
