package router

import "google.golang.org/grpc"

// The client side of the router's API: the gRPC service config that
// retries what may be retried, and the dial options that carry it.

// ServiceConfig is the gRPC service config for the router's callers, in
// the JSON form every gRPC implementation reads (docs/grpc-service-config.json
// holds the same text, for callers in other languages).
//
// Notify, NotifyBatch and Broadcast are retried, up to 5 attempts in all,
// when the answer is UNAVAILABLE (the router restarting, its connection
// lost, Redis or Kafka briefly unreachable) or RESOURCE_EXHAUSTED (the
// caller's rate limit, whose refusal carries grpc-retry-pushback-ms: the
// next attempt waits exactly as long as the limiter asks). Other attempts
// back off exponentially, a random time up to 0.2s, 0.4s, 0.8s and 1.6s.
// A retry resends the request as it was, idempotency_key included, so a
// notification that the router routed before its answer was lost is not
// routed again: the retry's answer says duplicate.
//
// waitForReady makes a call wait for a connection while none is ready (a
// router restarting behind a single address) instead of failing at once,
// and timeout bounds each call at 30s, the caller's own deadline if shorter.
//
// Broadcast has no idempotency key: a Broadcast whose connection is cut
// after the router published it, and before its answer arrives, is
// published twice. The router's graceful stop finishes calls in flight, so
// that takes a crash or a stop past its ShutdownTimeout.
//
// NotifyStream is not named: a stream is long-lived, so it takes no
// timeout, and gRPC does not retry a stream once it has had a response.
// Its caller resumes a stream that ended by sending the notifications it
// has no response for again, on a new stream, with their idempotency keys
// (README, "Calling the router: NotifyStream").
const ServiceConfig = `{
  "methodConfig": [
    {
      "name": [
        {"service": "herald.v1.RouterService", "method": "Notify"},
        {"service": "herald.v1.RouterService", "method": "NotifyBatch"},
        {"service": "herald.v1.RouterService", "method": "Broadcast"}
      ],
      "waitForReady": true,
      "timeout": "30s",
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
      }
    }
  ]
}
`

// DialOptions are the options a Go caller of the router dials with, next
// to its transport credentials:
//
//   - ServiceConfig, as the channel's default service config;
//   - a send limit of DefaultMaxRequestBytes, so that a request too large
//     for a router with the default limit fails at once, in the caller,
//     with RESOURCE_EXHAUSTED, and is not sent again and again as each
//     retried RESOURCE_EXHAUSTED would be (a router with a larger
//     MaxRequestBytes needs a larger grpc.MaxCallSendMsgSize, added after
//     these options);
//   - a retry buffer that holds such a request, so that every request the
//     router accepts can be retried (gRPC's default, 256 KiB, gives up
//     retrying a larger NotifyBatch);
//   - fixed flow-control windows, which turn off gRPC's bandwidth-delay
//     estimator: with it on, a client sends a PING after the first
//     response of each quiet spell, so that at low rates every call cost
//     the router a PING read and its answer's write, on top of the call's.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultServiceConfig(ServiceConfig),
		grpc.WithStaticStreamWindowSize(streamWindowBytes),
		grpc.WithStaticConnWindowSize(connWindowBytes),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallSendMsgSize(DefaultMaxRequestBytes),
			// The message and its 5-byte gRPC frame header.
			grpc.MaxRetryRPCBufferSize(DefaultMaxRequestBytes+5),
		),
	}
}
