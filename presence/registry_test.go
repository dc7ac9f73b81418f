package presence_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	"github.com/redis/go-redis/v9"
)

func newTestRegistry(tb testing.TB, ttl time.Duration) *presence.Registry {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		tb.Fatal(err)
	}
	return reg
}

func TestLeaseRemoveOnline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := newTestRegistry(t, 5*time.Second)
	since := time.UnixMilli(time.Now().UnixMilli())
	a1 := presence.Conn{User: "alice", ID: "c1", Edge: "edge-a", Since: since}
	a2 := presence.Conn{User: "alice", ID: "c2", Edge: "edge-b", Since: since}
	b1 := presence.Conn{User: "bob", ID: "c3", Edge: "edge-a", Since: since}
	if err := reg.Lease(ctx, a1, a2, b1); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Online(ctx, "alice", "bob", "carol")
	if err != nil {
		t.Fatal(err)
	}
	if got["alice"] != 2 || got["bob"] != 1 || got["carol"] != 0 {
		t.Fatalf("Online = %v, want alice:2 bob:1 carol:0", got)
	}

	conns, err := reg.Conns(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 {
		t.Fatalf("Conns(alice) = %v, want 2 entries", conns)
	}
	for _, c := range conns {
		if c.User != "alice" || !c.Since.Equal(since) || c.Expires.Before(time.Now()) {
			t.Errorf("bad entry %+v", c)
		}
		if !(c.ID == "c1" && c.Edge == "edge-a") && !(c.ID == "c2" && c.Edge == "edge-b") {
			t.Errorf("unexpected entry %+v", c)
		}
	}

	// A clean close removes the entry at once.
	if err := reg.Remove(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if got, _ := reg.Online(ctx, "alice"); got["alice"] != 1 {
		t.Fatalf("after removing one of two: alice = %d, want 1", got["alice"])
	}
	if err := reg.Remove(ctx, a2, b1); err != nil {
		t.Fatal(err)
	}
	got, _ = reg.Online(ctx, "alice", "bob")
	if got["alice"] != 0 || got["bob"] != 0 {
		t.Fatalf("after removing all: %v, want all offline", got)
	}
}

func TestLeaseExpiresWithoutRenewal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The lease must outlive a renewal's sleep (a third of it) and the
	// read after it on a loaded machine.
	ttl := time.Second
	reg := newTestRegistry(t, ttl)
	kept := presence.Conn{User: "dave", ID: "kept", Edge: "e1", Since: time.Now()}
	dead := presence.Conn{User: "erin", ID: "dead", Edge: "e2", Since: time.Now()}
	if err := reg.Lease(ctx, kept, dead); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Renew only "kept", as a live edge would; "dead"'s edge is gone.
	for time.Since(start) < 3*ttl {
		if err := reg.Lease(ctx, kept); err != nil {
			t.Fatal(err)
		}
		time.Sleep(reg.RenewInterval())
	}
	got, err := reg.Online(ctx, "dave", "erin")
	if err != nil {
		t.Fatal(err)
	}
	if got["dave"] != 1 || got["erin"] != 0 {
		t.Fatalf("Online = %v, want dave:1 (renewed) erin:0 (expired)", got)
	}
}

func TestInvalidConn(t *testing.T) {
	t.Parallel()
	reg := newTestRegistry(t, time.Second)
	for _, c := range []presence.Conn{
		{ID: "c", Edge: "e"},
		{User: "u", Edge: "e"},
		{User: "u", ID: "c"},
		{User: "u", ID: "c|x", Edge: "e"},
	} {
		if err := reg.Lease(context.Background(), c); !errors.Is(err, presence.ErrInvalidConn) {
			t.Errorf("Lease(%+v) = %v, want ErrInvalidConn", c, err)
		}
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	rdb, _ := testenv.Redis(t)
	if _, err := presence.New(nil, presence.Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := presence.New(rdb, presence.Config{LeaseTTL: time.Millisecond}); err == nil {
		t.Error("New with 1ms TTL succeeded")
	}
	if _, err := presence.New(rdb, presence.Config{Prefix: "app{1}:"}); err == nil {
		t.Error("New with a brace in the prefix succeeded")
	}
	reg, err := presence.New(rdb, presence.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if reg.LeaseTTL() != 30*time.Second {
		t.Errorf("default lease TTL = %v, want 30s", reg.LeaseTTL())
	}
}

// newOwnRegistry returns a registry on a redis-server of the test's own,
// which has none of the scripts loaded, and the server.
func newOwnRegistry(tb testing.TB) (*testenv.RedisServer, *presence.Registry) {
	tb.Helper()
	srv := testenv.StartRedisServer(tb)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	tb.Cleanup(func() { rdb.Close() })
	reg, err := presence.New(rdb, presence.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	return srv, reg
}

// After a Redis restart the scripts are gone from its cache; the registry
// must load them again rather than fail.
func TestScriptsReloadAfterRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, reg := newOwnRegistry(t)
	c := presence.Conn{User: "u", ID: "c", Edge: "e", Since: time.Now()}
	if err := reg.Lease(ctx, c); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	srv.Start()
	if err := reg.Lease(ctx, c); err != nil {
		t.Fatalf("Lease after restart: %v", err)
	}
	if got, err := reg.Online(ctx, "u"); err != nil || got["u"] != 1 {
		t.Fatalf("Online after restart = %v, %v; want u:1", got, err)
	}
}

// TestLeaseManyUsers: a renewal wave of more users than one script renews
// (on a single Redis, several users share a script) leases every
// connection, and each user's key expires with its last lease.
func TestLeaseManyUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	const ttl = 5 * time.Second
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	var conns []presence.Conn
	var users []string
	for u := range 150 {
		user := "u" + strconv.Itoa(u)
		users = append(users, user)
		for c := range 1 + u%3 { // 1 to 3 connections each
			conns = append(conns, presence.Conn{User: user, ID: "c" + strconv.Itoa(c), Edge: "e", Since: time.Now()})
		}
	}
	if err := reg.Lease(ctx, conns...); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Online(ctx, users...)
	if err != nil {
		t.Fatal(err)
	}
	for u, user := range users {
		if got[user] != 1+u%3 {
			t.Errorf("%s has %d live leases, want %d", user, got[user], 1+u%3)
		}
		if pttl := rdb.PTTL(ctx, reg.Key(user)).Val(); pttl <= 0 || pttl > ttl {
			t.Errorf("%s's key expires in %v, want within %v", user, pttl, ttl)
		}
	}
}

// TestLeaseManyUsersLoadsScript: the first renewal wave on a Redis that
// has not seen the scripts (a new or restarted server) leases every user:
// the pipeline sent again after NOSCRIPT carries every script.
func TestLeaseManyUsersLoadsScript(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, reg := newOwnRegistry(t)
	var conns []presence.Conn
	var users []string
	for u := range 150 {
		users = append(users, "u"+strconv.Itoa(u))
		conns = append(conns, presence.Conn{User: users[u], ID: "c", Edge: "e", Since: time.Now()})
	}
	if err := reg.Lease(ctx, conns...); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Online(ctx, users...)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if got[u] != 1 {
			t.Fatalf("%s has %d live leases after the first renewal, want 1", u, got[u])
		}
	}
}
