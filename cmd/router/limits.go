package main

import (
	"flag"
	"time"

	"github.com/herald-push/herald/router"
)

// limits holds the flags of the gRPC server's limits (docs/security.md).
type limits struct {
	headerBytes, requestBytes, streamsPerConn, conns int
	connsPerIP                                       int
	keepaliveMinTime, maxConnIdle, handshake         time.Duration
	streamInFlight                                   int
	streamIdle                                       time.Duration
}

func (l *limits) register(fs *flag.FlagSet) {
	fs.IntVar(&l.headerBytes, "grpc-max-header-bytes", router.DefaultMaxHeaderBytes, "largest metadata (HTTP/2 header list) of one call")
	fs.IntVar(&l.requestBytes, "grpc-max-request-bytes", router.DefaultMaxRequestBytes, "largest request message, and so NotifyBatch; larger is refused INVALID_ARGUMENT")
	fs.IntVar(&l.streamsPerConn, "grpc-max-streams-per-conn", router.DefaultMaxStreamsPerConn, "most calls in flight on one connection")
	fs.IntVar(&l.conns, "grpc-max-conns", router.DefaultMaxConns, "most open gRPC connections; past it a new one closes the oldest that has carried no authenticated call, or is closed itself when every one has")
	fs.IntVar(&l.connsPerIP, "grpc-max-conns-per-ip", router.DefaultMaxConnsPerIP, "most open gRPC connections from one client address (IPv6: per /64); more are closed when accepted; -1 disables")
	fs.DurationVar(&l.handshake, "grpc-handshake-timeout", router.DefaultHandshakeTimeout, "close a connection that has not completed its TLS and HTTP/2 handshakes within this")
	fs.DurationVar(&l.keepaliveMinTime, "grpc-keepalive-min-time", router.DefaultKeepaliveMinTime, "shortest ping interval a client may use; faster pingers are disconnected")
	fs.DurationVar(&l.maxConnIdle, "grpc-max-conn-idle", router.DefaultMaxConnIdle, "close a connection with no call for this long")
	fs.IntVar(&l.streamInFlight, "notify-stream-max-in-flight", router.DefaultStreamMaxInFlight, "most notifications of one NotifyStream read and not yet answered (at most 1024); the router stops reading at it")
	fs.DurationVar(&l.streamIdle, "notify-stream-idle-timeout", router.DefaultStreamIdleTimeout, "end a NotifyStream with nothing sent and nothing in flight for this long")
}

// apply sets cfg's limits from the flags.
func (l limits) apply(cfg *router.Config) {
	cfg.MaxHeaderBytes, cfg.MaxRequestBytes = l.headerBytes, l.requestBytes
	cfg.MaxStreamsPerConn, cfg.MaxConns, cfg.MaxConnsPerIP = l.streamsPerConn, l.conns, l.connsPerIP
	cfg.HandshakeTimeout = l.handshake
	cfg.KeepaliveMinTime, cfg.MaxConnIdle = l.keepaliveMinTime, l.maxConnIdle
	cfg.StreamMaxInFlight, cfg.StreamIdleTimeout = l.streamInFlight, l.streamIdle
}
