package daemon_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/integration/testenv"
)

// TestReadyzFollowsRedis: /readyz answers 503 with the reason while Redis
// is down, and 200 once it is back; /healthz stays 200 throughout.
func TestReadyzFollowsRedis(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	kafka := daemon.Kafka{Brokers: "127.0.0.1:1"} // nothing listens there
	admin := httptest.NewServer(daemon.Admin{Gatherer: prometheus.NewRegistry(), Ready: daemon.RedisReady(rdb)}.Handler())
	t.Cleanup(admin.Close)
	withKafka := httptest.NewServer(daemon.Admin{Gatherer: prometheus.NewRegistry(),
		Ready: daemon.AllReady(daemon.RedisReady(rdb), kafka.Ready)}.Handler())
	t.Cleanup(withKafka.Close)

	get := func(base, path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(admin.URL, "/readyz"); code != 200 {
		t.Fatalf("/readyz with Redis up: %d %s", code, body)
	}
	if code, body := get(withKafka.URL, "/readyz"); code != 503 || !strings.Contains(body, "kafka") {
		t.Fatalf("/readyz with Kafka unreachable: %d %q, want 503 naming kafka", code, body)
	}
	srv.Stop()
	if code, body := get(admin.URL, "/readyz"); code != 503 || !strings.Contains(body, "redis") {
		t.Fatalf("/readyz with Redis down: %d %q, want 503 naming redis", code, body)
	}
	if code, _ := get(admin.URL, "/healthz"); code != 200 {
		t.Fatalf("/healthz with Redis down: %d, want 200 (alive)", code)
	}
	srv.Start()
	testenv.WaitFor(t, 5*time.Second, "/readyz to recover", func() bool {
		code, _ := get(admin.URL, "/readyz")
		return code == 200
	})
}
