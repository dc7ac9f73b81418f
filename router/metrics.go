package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

type metrics struct {
	notifies    *prometheus.CounterVec
	latency     prometheus.Histogram
	redisErrors prometheus.Counter
	duplicates  prometheus.Counter
	broadcasts  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		notifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "notify_total",
			Help: "Notify calls by route taken (online, offline, stale, none) and gRPC status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "router", Name: "notify_duration_seconds",
			Help:    "Time to handle a Notify call, from receipt to response.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "redis_errors_total",
			Help: "Notify calls that failed because Redis failed or was unreachable.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "idempotent_duplicates_total",
			Help: "Notify calls answered from the idempotency record without delivering again.",
		}),
		broadcasts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "broadcast_total",
			Help: "Broadcast calls by gRPC status code.",
		}, []string{"code"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.notifies, m.latency, m.redisErrors, m.duplicates, m.broadcasts} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// routeLabel is the metric and log label for a response's route.
func routeLabel(resp *heraldv1.NotifyResponse) string {
	switch {
	case resp == nil:
		return "none"
	case resp.GetStalePresence():
		return "stale"
	case resp.GetRoute() == heraldv1.Route_ROUTE_ONLINE:
		return "online"
	default:
		return "offline"
	}
}

func (m *metrics) observe(resp *heraldv1.NotifyResponse, err error, d time.Duration) {
	m.notifies.WithLabelValues(routeLabel(resp), status.Code(err).String()).Inc()
	m.latency.Observe(d.Seconds())
	if resp.GetDuplicate() {
		m.duplicates.Inc()
	}
}
