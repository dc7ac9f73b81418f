package main

import "testing"

func TestRunOfflineQuick(t *testing.T) {
	redisAddr := testRedis(t)
	if redisAddr == "mini" {
		t.Fatal("the offline scenario's worker child needs a redis-server on 127.0.0.1:6379: run `make test`, which installs and starts it, or `apt-get install redis-server && redis-server --daemonize yes --save ''`")
	}
	_, fig := runReport(t, "-self", "-scenario", "offline", "-redis", redisAddr, "-base-duration", "300ms",
		"-callers", "8", "-workers", "16", "-duration", "1s", "-offline-users", "50", "-offline-backlog", "600",
		"-offline-rate", "100", "-offline-partitions", "3", "-offline-latency", "5ms", "-offline-jitter", "2ms",
		"-offline-quota", "12000")
	for key, want := range map[string]float64{
		"offline|pushes accepted by FCM":           600,
		"offline|429 QUOTA_EXCEEDED answers":       0,
		"offline 100/s|pushes accepted by FCM":     100,
		"offline 100/s|429 QUOTA_EXCEEDED answers": 0,
	} {
		r, ok := fig[key]
		if !ok {
			t.Errorf("no row %q", key)
			continue
		}
		if r.Value != want {
			t.Errorf("%s = %v, want %v", key, r.Value, want)
		}
	}
	for _, key := range []string{"offline|pushes a second, worker draining the backlog (steady, after the first second)", "offline|worker CPU while draining (steady)",
		"offline 100/s|Kafka hand-off p99 (router accepted → worker fetched)"} {
		if r, ok := fig[key]; !ok || r.Value <= 0 {
			t.Errorf("%s = %v (present %v), want > 0", key, r.Value, ok)
		}
	}
}
