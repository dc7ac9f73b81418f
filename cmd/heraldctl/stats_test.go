package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Two scrapes of each endpoint, as the binaries would serve them a few
// seconds apart.
const (
	routerBefore = `# TYPE herald_router_notify_total counter
herald_router_notify_total{code="OK",route="online"} 100
herald_router_notify_total{code="OK",route="push_queued"} 10
# TYPE herald_router_notify_duration_seconds histogram
herald_router_notify_duration_seconds_bucket{le="0.001"} 10
herald_router_notify_duration_seconds_bucket{le="0.01"} 20
herald_router_notify_duration_seconds_bucket{le="0.1"} 20
herald_router_notify_duration_seconds_bucket{le="+Inf"} 20
herald_router_notify_duration_seconds_sum 0.05
herald_router_notify_duration_seconds_count 20
# TYPE herald_router_redis_errors_total counter
herald_router_redis_errors_total 50
# TYPE herald_router_kafka_errors_total counter
herald_router_kafka_errors_total 0
`
	// +200 online, +20 push_queued, +4 failed (a series that is new), a
	// restart of the Redis errors counter, and 200 observations of which
	// 100 are up to 1ms, 148 up to 10ms and all up to 100ms.
	routerAfter = `# TYPE herald_router_notify_total counter
herald_router_notify_total{code="OK",route="online"} 300
herald_router_notify_total{code="OK",route="push_queued"} 30
herald_router_notify_total{code="Unavailable",route="none"} 4
# TYPE herald_router_notify_duration_seconds histogram
herald_router_notify_duration_seconds_bucket{le="0.001"} 110
herald_router_notify_duration_seconds_bucket{le="0.01"} 168
herald_router_notify_duration_seconds_bucket{le="0.1"} 220
herald_router_notify_duration_seconds_bucket{le="+Inf"} 220
herald_router_notify_duration_seconds_sum 3.5
herald_router_notify_duration_seconds_count 220
# TYPE herald_router_redis_errors_total counter
herald_router_redis_errors_total 6
# TYPE herald_router_kafka_errors_total counter
herald_router_kafka_errors_total 0
`
	edgeBefore = `# TYPE herald_sse_connections_open gauge
herald_sse_connections_open 7
# TYPE herald_sse_connections_closed_total counter
herald_sse_connections_closed_total{reason="client_closed"} 5
herald_sse_connections_closed_total{reason="slow_consumer"} 0
# TYPE herald_sse_events_written_total counter
herald_sse_events_written_total 1000
# TYPE herald_sse_delivery_latency_seconds histogram
herald_sse_delivery_latency_seconds_bucket{le="0.005"} 0
herald_sse_delivery_latency_seconds_bucket{le="0.01"} 0
herald_sse_delivery_latency_seconds_bucket{le="+Inf"} 0
herald_sse_delivery_latency_seconds_sum 0
herald_sse_delivery_latency_seconds_count 0
`
	edgeAfter = `# TYPE herald_sse_connections_open gauge
herald_sse_connections_open 12
# TYPE herald_sse_connections_closed_total counter
herald_sse_connections_closed_total{reason="client_closed"} 25
herald_sse_connections_closed_total{reason="slow_consumer"} 2
# TYPE herald_sse_events_written_total counter
herald_sse_events_written_total 1400
# TYPE herald_sse_delivery_latency_seconds histogram
herald_sse_delivery_latency_seconds_bucket{le="0.005"} 0
herald_sse_delivery_latency_seconds_bucket{le="0.01"} 300
herald_sse_delivery_latency_seconds_bucket{le="+Inf"} 400
herald_sse_delivery_latency_seconds_sum 9
herald_sse_delivery_latency_seconds_count 400
`
	// A second edge, idle until now.
	edge2Before = `# TYPE herald_sse_connections_open gauge
herald_sse_connections_open 0
# TYPE herald_sse_events_written_total counter
herald_sse_events_written_total 0
`
	edge2After = `# TYPE herald_sse_connections_open gauge
herald_sse_connections_open 3
# TYPE herald_sse_events_written_total counter
herald_sse_events_written_total 20
`
	workerBefore = `# TYPE herald_fcm_messages_total counter
herald_fcm_messages_total{outcome="sent"} 0
# TYPE herald_fcm_dead_letters_total counter
herald_fcm_dead_letters_total{code="NO_DEVICE"} 1
# TYPE herald_fcm_consumer_lag_messages gauge
herald_fcm_consumer_lag_messages{partition="0",topic="herald.offline"} 50
herald_fcm_consumer_lag_messages{partition="1",topic="herald.offline"} 0
`
	workerAfter = `# TYPE herald_fcm_messages_total counter
herald_fcm_messages_total{outcome="sent"} 40
herald_fcm_messages_total{outcome="unavailable"} 2
# TYPE herald_fcm_retries_total counter
herald_fcm_retries_total{code="UNAVAILABLE"} 2
# TYPE herald_fcm_dead_letters_total counter
herald_fcm_dead_letters_total{code="NO_DEVICE"} 3
# TYPE herald_fcm_consumer_lag_messages gauge
herald_fcm_consumer_lag_messages{partition="0",topic="herald.offline"} 5
herald_fcm_consumer_lag_messages{partition="1",topic="herald.offline"} 7
`
)

// newTestAdmin serves an admin listener whose /metrics answers before at
// the first scrape and after from then on, and whose /readyz answers
// notReady (with 503) when set.
func newTestAdmin(tb testing.TB, before, after, notReady string) string {
	tb.Helper()
	var scrapes atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if scrapes.Add(1) == 1 {
			_, _ = w.Write([]byte(before))
		} else {
			_, _ = w.Write([]byte(after))
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if notReady != "" {
			http.Error(w, notReady, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// deadAddr is an address where nothing listens.
func deadAddr(tb testing.TB) string {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr
}

func approx(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestStatsRates(t *testing.T) {
	t.Parallel()
	router := newTestAdmin(t, routerBefore, routerAfter, "")
	edge1 := newTestAdmin(t, edgeBefore, edgeAfter, "not ready: draining")
	edge2 := newTestAdmin(t, edge2Before, edge2After, "")
	worker := newTestAdmin(t, workerBefore, workerAfter, "")
	dead := deadAddr(t)
	eps := endpointsFrom(map[string]string{
		"router": router, "edge": edge1 + ", " + edge2 + "," + dead, "worker": "http://" + worker + "/",
	})

	ctx := context.Background()
	client := &http.Client{Timeout: 5 * time.Second}
	before := scrapeAll(ctx, client, eps)
	after := scrapeAll(ctx, client, eps)
	// Exactly 2s apart, so that the rates are exact.
	for i := range after {
		after[i].at = before[i].at.Add(2 * time.Second)
	}
	checkReady(ctx, client, eps)
	rep := summarize(eps, before, after)

	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"interval", rep.IntervalSeconds, 2},
		{"notify/s", rep.Router.Notify, 112},
		{"notify/s online", rep.Router.NotifyByRoute["online"], 100},
		{"notify/s push_queued", rep.Router.NotifyByRoute["push_queued"], 10},
		{"notify/s none", rep.Router.NotifyByRoute["none"], 2},
		{"notify errors/s", rep.Router.NotifyErrors, 2},
		{"notify errors/s Unavailable", rep.Router.NotifyErrorsCode["Unavailable"], 2},
		// The 198th of 200 observations is in (10ms, 100ms], 50 of 52 in.
		{"notify p99", *rep.Router.NotifyP99, 0.01 + 0.09*50/52},
		{"redis errors/s (counter reset)", rep.Router.RedisErrors, 3},
		{"connections open (two edges)", rep.Edge.ConnectionsOpen, 15},
		{"closes/s", rep.Edge.Closes, 11},
		{"closes/s client_closed", rep.Edge.ClosesByReason["client_closed"], 10},
		{"closes/s slow_consumer", rep.Edge.ClosesByReason["slow_consumer"], 1},
		{"events written/s (two edges)", rep.Edge.EventsWritten, 210},
		// 300 of 400 within 10ms: the 396th is past the last finite bound.
		{"delivery p99", *rep.Edge.DeliveryP99, 0.01},
		{"messages/s", rep.Worker.Messages, 21},
		{"messages/s sent", rep.Worker.MessagesByOutcome["sent"], 20},
		{"messages/s unavailable", rep.Worker.MessagesByOutcome["unavailable"], 1},
		{"retries/s", rep.Worker.Retries, 1},
		{"dead letters/s", rep.Worker.DeadLetters, 1},
		{"consumer lag", rep.Worker.ConsumerLag, 12},
	} {
		if !approx(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if _, ok := rep.Router.NotifyErrorsCode["OK"]; ok {
		t.Error("OK counted among the errors")
	}

	status := map[string]string{}
	for _, ep := range rep.Endpoints {
		status[ep.Addr] = ep.Status
	}
	if status[router] != "ready" || status[edge1] != "not ready: draining" || status[edge2] != "ready" ||
		status["http://"+worker+"/"] != "ready" || !strings.HasPrefix(status[dead], "scrape failed: ") {
		t.Errorf("statuses %q; want ready, the edge draining and the dead one failing", status)
	}

	var out bytes.Buffer
	if err := printStats(&out, rep); err != nil {
		t.Fatal(err)
	}
	// Compare words, not the alignment.
	words := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"ROUTER notify/s 112 online 100, push_queued 10, none 2",
		"notify errors/s 2 Unavailable 2 notify p99 96.5ms redis errors/s 3",
		"SSE EDGE connections open 15 closes/s 11 client_closed 10, slow_consumer 1",
		"events written/s 210 delivery p99 10ms",
		"FCM WORKER messages/s 21 sent 20, unavailable 1 retries/s 1 UNAVAILABLE 1",
		"dead letters/s 1 NO_DEVICE 1 consumer lag 12",
		edge1 + " edge not ready: draining",
	} {
		if !strings.Contains(words, want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	for l := range strings.Lines(out.String()) {
		if strings.HasSuffix(l, " \n") {
			t.Errorf("trailing space in %q", l)
		}
	}
}

func TestBucketQuantile(t *testing.T) {
	t.Parallel()
	inf := math.Inf(1)
	for _, tc := range []struct {
		name    string
		buckets map[float64]float64
		want    float64
		ok      bool
	}{
		{"nothing observed", map[float64]float64{1: 0, inf: 0}, 0, false},
		{"no buckets", map[float64]float64{}, 0, false},
		{"within the first bucket", map[float64]float64{1: 100, 2: 100, inf: 100}, 0.99, true},
		{"in +Inf: the highest finite bound", map[float64]float64{1: 0, 2: 0, inf: 10}, 2, true},
	} {
		got, ok := bucketQuantile(0.99, tc.buckets)
		if ok != tc.ok || !approx(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// The command end to end: two scrapes -interval apart, JSON out.
func TestStatsCommand(t *testing.T) {
	t.Parallel()
	router := newTestAdmin(t, routerBefore, routerAfter, "")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"stats", "-router", router, "-interval", "100ms", "-json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep struct {
		IntervalSeconds float64
		Endpoints       []struct{ Ready bool }
		Router          *struct {
			NotifyPerSecond float64
		}
		Edge *struct{}
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v in %s", err, stdout.String())
	}
	// 224 more calls over a little more than 100ms.
	if rep.IntervalSeconds < 0.1 || rep.Router == nil || rep.Router.NotifyPerSecond <= 0 ||
		!approx(rep.Router.NotifyPerSecond, 224/rep.IntervalSeconds) || rep.Edge != nil ||
		len(rep.Endpoints) != 1 || !rep.Endpoints[0].Ready {
		t.Errorf("report %s; want ~2240 Notify/s from a ready router, no edge section", stdout.String())
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"stats", "-router", router, "-interval", "0s"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "-interval") {
		t.Errorf("-interval 0: exit %d, %q; want 1 naming the flag", code, stderr.String())
	}
}

// With no address, stats reads the binaries' default admin addresses.
func TestStatsDefaultEndpoints(t *testing.T) {
	t.Parallel()
	var got []string
	for _, ep := range endpointsFrom(map[string]string{"router": "", "edge": " ", "worker": ""}) {
		got = append(got, strings.Join(ep.Roles, ",")+"="+ep.Addr)
	}
	want := []string{"router=127.0.0.1:9090", "edge=127.0.0.1:9091", "worker=127.0.0.1:9093"}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	// One address for several roles, as for the all-in-one, is one endpoint.
	eps := endpointsFrom(map[string]string{"router": "127.0.0.1:9090", "worker": "127.0.0.1:9090"})
	if len(eps) != 1 || !slices.Equal(eps[0].Roles, []string{"router", "worker"}) {
		t.Errorf("one address for two roles: %+v", eps)
	}
}
