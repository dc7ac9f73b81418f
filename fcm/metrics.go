package fcm

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

type metrics struct {
	notifications *prometheus.CounterVec
	messages      *prometheus.CounterVec
	sendSeconds   prometheus.Histogram
	handoff       prometheus.Histogram
	retries       *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	tokensRemoved prometheus.Counter
	lag           *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "notifications_total",
			Help: "Notifications the worker finished with, by outcome: sent (to at least one device), retry_queued, dead_lettered, expired, no_device, undecodable.",
		}, []string{"outcome"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "messages_total",
			Help: "FCM messages (one notification to one device) by outcome: sent, duplicate (skipped by the dedupe window), unregistered, invalid_token, sender_id_mismatch, invalid_argument, quota_exceeded, unavailable, internal, deadline_exceeded (the call outlived the send timeout), other.",
		}, []string{"outcome"}),
		sendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "send_duration_seconds",
			Help:    "Time of one SendEach call to FCM (up to 50 messages, sent at once).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		handoff: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "handoff_seconds",
			Help:    "Time from the router's acceptance of a notification to the worker's fetch of it from the offline topic: the Kafka hand-off, with any backlog.",
			Buckets: []float64{.001, .002, .003, .005, .0075, .01, .015, .02, .05, .1, .25, 1, 5, 30},
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "retries_total",
			Help: "Notifications written to the retry topic, by the FCM error code that caused it.",
		}, []string{"code"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "dead_letters_total",
			Help: "Records written to the dead-letter topic, by error code (an FCM code, NO_DEVICE or UNDECODABLE).",
		}, []string{"code"}),
		tokensRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "tokens_removed_total",
			Help: "Device tokens removed from the registry because FCM reported them dead.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "herald", Subsystem: "fcm", Name: "consumer_lag_messages",
			Help: "Records not yet handled, per topic and partition, as of this worker's last commit there.",
		}, []string{"topic", "partition"}),
	}
	// The outcomes start at zero, so that increase() sees the first one.
	for _, o := range []string{"sent", "retry_queued", "dead_lettered", "expired", "no_device", "undecodable"} {
		m.notifications.WithLabelValues(o)
	}
	for _, o := range []string{"sent", "duplicate", "unregistered", "invalid_token", "sender_id_mismatch",
		"invalid_argument", "quota_exceeded", "unavailable", "internal", "deadline_exceeded", "other"} {
		m.messages.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.notifications, m.messages, m.sendSeconds, m.handoff, m.retries, m.deadLetters, m.tokensRemoved, m.lag} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// observeLag sets each partition's lag from the last record of a committed
// batch there.
func (m *metrics) observeLag(batch []kafka.Message) {
	last := map[int]kafka.Message{}
	for _, msg := range batch {
		last[msg.Partition] = msg
	}
	for p, msg := range last {
		m.lag.WithLabelValues(msg.Topic, strconv.Itoa(p)).Set(float64(max(msg.HighWaterMark-msg.Offset-1, 0)))
	}
}
