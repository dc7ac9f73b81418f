package router

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/receipts"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// NewSweeper returns the sweeper that falls ack-or-push notifications whose
// deadline passed back to the offline queue, counting what it does in reg
// (when not nil). Every router runs one; they share the work safely.
func NewSweeper(r *receipts.Receipts, queue delivery.OfflineQueue, log *slog.Logger, reg prometheus.Registerer) (*receipts.Sweeper, error) {
	fallbacks := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "router", Name: "ack_fallbacks_total",
		Help: "Ack-or-push notifications not acknowledged by their deadline, queued for an FCM push.",
	})
	errs := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "herald", Subsystem: "router", Name: "ack_sweep_errors_total",
		Help: "Failed attempts to fall an expired receipt back (Redis or Kafka errors); it is tried again.",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{fallbacks, errs} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	s := r.NewSweeper(queue, log)
	s.OnFallback = func(*heraldv1.Envelope) { fallbacks.Inc() }
	s.OnError = func(error) { errs.Inc() }
	return s, nil
}
