package main

import (
	"flag"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/router"
)

// routerFlags are the router's own flags, with those of its security and
// its gRPC server's limits.
type routerFlags struct {
	grpcAddr   string
	maxPayload int
	defaultTTL time.Duration
	idemWindow time.Duration
	shutdown   time.Duration
	histLen    int
	histWindow time.Duration
	offline    bool
	maxDevices int
	ackDefault time.Duration
	traceTTL   time.Duration
	traceRate  int
	maxPipe    int
	sec        security
	lim        limits
}

// register defines the flags on fs.
func (f *routerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.grpcAddr, "grpc-addr", ":7070", "gRPC listen address")
	fs.IntVar(&f.maxPayload, "max-payload-bytes", router.DefaultMaxPayloadBytes, "largest Notify data accepted")
	fs.DurationVar(&f.defaultTTL, "default-ttl", router.DefaultNotifyTTL, "TTL of a notification that sets none")
	fs.DurationVar(&f.idemWindow, "idempotency-window", delivery.DefaultIdempotencyWindow, "how long idempotency keys are remembered")
	fs.DurationVar(&f.shutdown, "shutdown-timeout", router.DefaultShutdownTimeout, "graceful stop limit before in-flight calls are cut")
	fs.IntVar(&f.histLen, "history-length", delivery.DefaultHistoryLength, "events kept per user and topic for Last-Event-ID recovery (at least; Redis trims whole stream nodes)")
	fs.DurationVar(&f.histWindow, "history-window", delivery.DefaultHistoryWindow, "how long events are kept for recovery; must match the edges'")
	fs.BoolVar(&f.offline, "offline", true, "queue offline users' notifications to Kafka for FCM; false only records them in history")
	fs.IntVar(&f.maxDevices, "max-devices-per-user", devices.DefaultMaxPerUser, "device tokens kept per user; the oldest go first")
	fs.DurationVar(&f.ackDefault, "ack-deadline", router.DefaultAckDeadline, "ack deadline of ack-or-push notifications that set none")
	fs.DurationVar(&f.traceTTL, "trace-ttl", delivery.DefaultTraceTTL, "how long each notification's trail is kept for heraldctl trace; 0 keeps none")
	fs.IntVar(&f.traceRate, "trace-rate", delivery.DefaultTraceRate, "most notifications a second whose trail is kept (the first of each second); -1 traces every one")
	fs.IntVar(&f.maxPipe, "max-pipeline", delivery.DefaultMaxPipeline, "most concurrent Notify calls sent to Redis in one pipeline; 1 gives each call a round trip of its own")
	f.sec.register(fs)
	f.lim.register(fs)
}

// publisherConfig is the publisher's configuration, without its offline
// queue and receipts.
func (f *routerFlags) publisherConfig() delivery.PublisherConfig {
	pcfg := delivery.PublisherConfig{
		IdempotencyWindow: f.idemWindow,
		History:           delivery.HistoryConfig{Length: f.histLen, Window: f.histWindow},
		TraceTTL:          f.traceTTL,
		TraceRate:         f.traceRate,
		MaxPipeline:       f.maxPipe,
	}
	if f.traceTTL == 0 {
		pcfg.TraceTTL = -1
	}
	return pcfg
}

// serviceConfig is the gRPC service's configuration.
func (f *routerFlags) serviceConfig(ids redact.UserIDs) router.Config {
	rcfg := router.Config{
		MaxPayloadBytes: f.maxPayload,
		DefaultTTL:      f.defaultTTL,
		ShutdownTimeout: f.shutdown,
		UserIDs:         ids,
		AckDeadline:     f.ackDefault,
	}
	f.lim.apply(&rcfg)
	return rcfg
}
