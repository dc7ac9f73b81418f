package daemon_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/integration/testenv"
)

// TestRedisClientsHaveDeadlines: the clients NewRedis builds, single and
// cluster, bound the dial, every read and write, and the wait for a pooled
// connection, with the timeouts docs/reliability.md states; none is zero or
// negative (go-redis' "no deadline").
func TestRedisClientsHaveDeadlines(t *testing.T) {
	t.Parallel()
	type timeouts struct{ dial, read, write, pool time.Duration }
	want := timeouts{daemon.RedisDialTimeout, daemon.RedisReadTimeout, daemon.RedisWriteTimeout, daemon.RedisPoolTimeout}
	for _, tc := range []struct {
		name  string
		addrs string
	}{
		{name: "single", addrs: testenv.RedisAddr()},
		// Two seeds always mean a cluster; nothing is dialled until used.
		{name: "cluster", addrs: "127.0.0.1:1,127.0.0.1:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := daemon.NewRedis(tc.addrs, "")
			t.Cleanup(func() { rdb.Close() })
			var got timeouts
			switch c := rdb.(type) {
			case *redis.Client:
				o := c.Options()
				got = timeouts{o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout}
			case *redis.ClusterClient:
				if tc.name != "cluster" {
					t.Fatalf("%s: got a cluster client", tc.addrs)
				}
				o := c.Options()
				got = timeouts{o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout}
			default:
				t.Fatalf("client %T", rdb)
			}
			if got != want {
				t.Fatalf("timeouts %+v, want %+v", got, want)
			}
			for _, d := range []time.Duration{got.dial, got.read, got.write, got.pool} {
				if d <= 0 {
					t.Fatalf("timeouts %+v: a zero or negative one means no deadline", got)
				}
			}
		})
	}
}
