package sseedge

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	open           prometheus.Gauge
	closed         *prometheus.CounterVec
	refused        *prometheus.CounterVec
	duration       prometheus.Histogram
	latency        prometheus.Histogram
	written        prometheus.Counter
	dropped        *prometheus.CounterVec
	presenceErrors prometheus.Counter
	acceptErrors   prometheus.Counter
	replays        *prometheus.CounterVec
	replayed       prometheus.Counter
	acks           *prometheus.CounterVec
	ackLatency     prometheus.Histogram
	catchUpErrors  prometheus.Counter
	budgetCloses   prometheus.Counter
	tcpRefused     *prometheus.CounterVec
	tcpEvicted     prometheus.Counter
}

// newMetrics registers the edge's metrics on reg; subscriptions reports the
// number of Redis channel subscriptions, link the state of the link to
// Redis Pub/Sub, queued the bytes held for all streams, and tcpConns the
// TCP connections open.
func newMetrics(reg prometheus.Registerer, subscriptions func() float64, link func() linkState, queued, tcpConns func() float64) (*metrics, error) {
	subs := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "herald", Subsystem: "sse", Name: "redis_subscriptions",
		Help: "User channels this edge is subscribed to in Redis (one per user with local connections).",
	}, subscriptions)
	links := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "herald", Subsystem: "sse", Name: "redis_links",
		Help: "Working Redis Pub/Sub connections: 1 on a single Redis, one per primary that owns a subscribed channel on a Redis Cluster.",
	}, func() float64 { return float64(link().links) })
	orphaned := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "herald", Subsystem: "sse", Name: "redis_orphaned_channels",
		Help: "Channels that local streams read but no working Redis connection is subscribed to (link down, or a moved slot not yet resubscribed).",
	}, func() float64 { return float64(link().orphaned) })
	m := &metrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "herald", Subsystem: "sse", Name: "connections_open",
			Help: "SSE connections currently open on this edge.",
		}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "connections_closed_total",
			Help: "SSE connections closed, by reason (see docs/metrics.md for the set).",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "connections_refused_total",
			Help: "SSE requests refused before the stream opened, and acknowledgements refused, by error code.",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "sse", Name: "connection_duration_seconds",
			Help:    "How long SSE connections stayed open.",
			Buckets: []float64{1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600},
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "sse", Name: "delivery_latency_seconds",
			Help:    "Time from the router accepting a notification to the edge writing it to a client.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "events_written_total",
			Help: "Events written to client connections (one per connection per event).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "events_dropped_total",
			Help: "Published envelopes the edge did not deliver: expired (past their TTL) or malformed.",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "accept_errors_total",
			Help: "Failures to accept a TCP connection, usually the process out of file descriptors; net/http retries them.",
		}),
		presenceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "sse", Name: "presence_errors_total",
			Help: "Failed presence lease, renewal or removal calls to Redis.",
		}),
	}
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "history_replays_total",
		Help: "Streams that caught up from history (replayed) or were told to re-fetch their state (reset).",
	}, []string{"outcome"})
	m.replayed = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "history_events_replayed_total",
		Help: "Events written to clients from history rather than live.",
	})
	m.catchUpErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "catchup_errors_total",
		Help: "Failed reads of history while a stream caught up (after the Redis link came back, or replaying a Last-Event-ID); each is retried with backoff until the broker grace runs out.",
	})
	m.budgetCloses = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "queue_budget_closes_total",
		Help: "Streams closed as slow_consumer because the edge held more than its queued bytes budget (-max-queued-bytes); the heaviest go first.",
	})
	queuedBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "herald", Subsystem: "sse", Name: "queued_bytes",
		Help: "Bytes of event data the edge holds for its streams: events queued for slow clients and pages of catch-ups from history.",
	}, queued)
	m.tcpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "tcp_connections_refused_total",
		Help: "TCP connections closed as soon as accepted, by the limit they were over: per_ip (-max-tcp-conns-per-ip) or total (-max-tcp-conns).",
	}, []string{"limit"})
	for _, l := range []string{"per_ip", "total"} {
		m.tcpRefused.WithLabelValues(l)
	}
	m.tcpEvicted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "sse", Name: "tcp_connections_evicted_total",
		Help: "TCP connections holding no stream closed to make room for a new one at the total limit (-max-tcp-conns), the longest waiting first.",
	})
	tcpOpen := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "herald", Subsystem: "sse", Name: "tcp_connections",
		Help: "TCP connections the edge holds: streams' (taken over or not), requests' and idle keep-alive ones.",
	}, tcpConns)
	m.acks, m.ackLatency = ackMetrics()
	for _, r := range closeReasons {
		m.closed.WithLabelValues(string(r))
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.open, m.closed, m.refused, m.duration, m.latency, m.written, m.dropped, m.presenceErrors, m.acceptErrors, m.replays, m.replayed, m.acks, m.ackLatency, subs, links, orphaned, m.catchUpErrors, m.budgetCloses, queuedBytes, m.tcpRefused, m.tcpEvicted, tcpOpen} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
