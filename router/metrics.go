package router

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

type metrics struct {
	notifies    *prometheus.CounterVec
	latency     prometheus.Histogram
	redisErrors prometheus.Counter
	kafkaErrors prometheus.Counter
	duplicates  prometheus.Counter
	broadcasts  *prometheus.CounterVec
	devices     *prometheus.CounterVec
	lookups     *prometheus.CounterVec
	streams     prometheus.Gauge
	// connsRefused counts connections closed on accept, by the limit
	// they were over: per_ip (MaxConnsPerIP) or total (MaxConns, every
	// open connection authenticated); connsEvicted, the connections
	// closed to make way for a new one at MaxConns (limitListener).
	connsRefused *prometheus.CounterVec
	connsEvicted prometheus.Counter

	// The series every routed notification counts in, looked up once:
	// WithLabelValues hashes its labels on each call.
	okRoutes      map[string]prometheus.Counter // notify_total{code="OK"} by route
	lookupOnline  prometheus.Counter
	lookupOffline prometheus.Counter
	lookupStale   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		notifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "notify_total",
			Help: "Notify calls, and notifications of NotifyBatch and NotifyStream calls, by route taken (online, push_queued, offline, stale, none) and gRPC status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "router", Name: "notify_duration_seconds",
			Help:    "Time to handle a Notify call, or a NotifyBatch call once per notification, or a NotifyStream notification, from receipt to response.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "redis_errors_total",
			Help: "Calls that failed because Redis failed or was unreachable.",
		}),
		kafkaErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "kafka_errors_total",
			Help: "Notify calls that failed because Kafka did not acknowledge the offline write.",
		}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "presence_lookups_total",
			Help: "Presence lookups made by Notify (one per routed call, inside the notify script), by result: online, offline, stale.",
		}, []string{"result"}),
		devices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "devices_total",
			Help: "Device registry changes through the API: registered, evicted (over the per-user bound), unregistered.",
		}, []string{"change"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "idempotent_duplicates_total",
			Help: "Notify calls answered from the idempotency record without delivering again.",
		}),
		broadcasts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "broadcast_total",
			Help: "Broadcast calls by gRPC status code.",
		}, []string{"code"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "herald", Subsystem: "router", Name: "notify_streams",
			Help: "NotifyStream calls open.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "conns_refused_total",
			Help: "gRPC connections closed as soon as accepted, by the limit they were over: per_ip (their client address, IPv6: its /64, held its limit of open connections) or total (the router held its limit, every connection having carried an authenticated call).",
		}, []string{"limit"}),
		connsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "router", Name: "conns_evicted_total",
			Help: "gRPC connections closed to make way for a new one when the router held its limit of open connections: the oldest that had never carried an authenticated call.",
		}),
	}
	m.okRoutes = make(map[string]prometheus.Counter)
	for _, route := range []string{"online", "push_queued", "offline", "stale"} {
		m.okRoutes[route] = m.notifies.WithLabelValues(route, codes.OK.String())
	}
	m.lookupOnline = m.lookups.WithLabelValues("online")
	m.lookupOffline = m.lookups.WithLabelValues("offline")
	m.lookupStale = m.lookups.WithLabelValues("stale")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.notifies, m.latency, m.redisErrors, m.kafkaErrors, m.duplicates, m.broadcasts, m.devices, m.lookups, m.streams, m.connsRefused, m.connsEvicted} {
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
	case resp.GetRoute() == heraldv1.Route_ROUTE_PUSH_QUEUED:
		return "push_queued"
	default:
		return "offline"
	}
}

// countError counts a failed call's backend error by the backend that failed.
func (m *metrics) countError(err error) {
	var offline *delivery.OfflineError
	switch {
	case errors.As(err, &offline):
		m.kafkaErrors.Inc()
	case errors.Is(err, delivery.ErrInFlight), errors.Is(err, devices.ErrInvalid), errors.Is(err, delivery.ErrNoReceipts),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	default:
		m.redisErrors.Inc()
	}
}

func (m *metrics) observe(resp *heraldv1.NotifyResponse, err error, d time.Duration) {
	route := routeLabel(resp)
	if c, ok := m.okRoutes[route]; ok && err == nil {
		c.Inc()
	} else {
		m.notifies.WithLabelValues(route, status.Code(err).String()).Inc()
	}
	m.latency.Observe(d.Seconds())
	if resp.GetDuplicate() {
		m.duplicates.Inc()
	} else if resp != nil {
		switch {
		case resp.GetStalePresence():
			m.lookupStale.Inc()
		case resp.GetRoute() == heraldv1.Route_ROUTE_ONLINE:
			m.lookupOnline.Inc()
		default:
			m.lookupOffline.Inc()
		}
	}
}
