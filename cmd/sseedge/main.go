// Command sseedge is Herald's SSE edge: it holds clients' Server-Sent Events
// connections at GET /v1/events, keeps their presence in Redis and writes
// each notification to every connection of its user.
//
// Every flag can also be set through the environment: -jwt-secret as
// HERALD_JWT_SECRET, and so on. See docs/configuration.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/cmd/internal/telemetry"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/sseedge"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sseedge:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("sseedge", flag.ContinueOnError)
	var common daemon.Common
	common.Register(fs, "127.0.0.1:9091")
	var (
		httpAddr   = fs.String("http-addr", ":8080", "SSE listen address")
		secret     = fs.String("jwt-secret", "", "HS256 secret of client tokens (prefer the environment variable)")
		secretFile = fs.String("jwt-secret-file", "", "file holding the HS256 secret")
		pubKeys    = fs.String("jwt-public-key-file", "", "PEM file of public keys for RS256 (RSA) and ES256 (P-256) client tokens")
		jwksSource = fs.String("jwt-jwks", "", "JWKS of public keys for RS256 and ES256 client tokens: a file or an http(s) URL")
		jwksEvery  = fs.Duration("jwks-refresh", 5*time.Minute, "how often the JWKS is read again")
		issuer     = fs.String("jwt-issuer", "", "required token issuer (iss), if set")
		audience   = fs.String("jwt-audience", "", "required token audience (aud), if set")
		edgeID     = fs.String("edge-id", "", "this edge's id (default: host name and a random suffix)")
		leaseTTL   = fs.Duration("lease-ttl", 30*time.Second, "presence lease TTL: a dead edge's users count as offline after this")
		heartbeat  = fs.Duration("heartbeat", 15*time.Second, "interval of keep-alive comments on idle streams")
		retry      = fs.Duration("retry", 2*time.Second, "reconnection delay sent to clients")
		queueSize  = fs.Int("queue-size", 64, "events queued per connection before it is closed as slow_consumer; also bounds a replay from history")
		maxQueued  = fs.Int64("max-queued-bytes", 256<<20, "bytes of event data held for all streams (queued, and replay pages); past it the heaviest streams are closed as slow_consumer")
		writeTO    = fs.Duration("write-timeout", 10*time.Second, "limit on each write to a client")
		requestTO  = fs.Duration("request-timeout", 10*time.Second, "limit on a request after its headers (its body, a response other than a stream) and on a stream's request until admitted")
		drain      = fs.Duration("drain-period", 30*time.Second, "time over which open streams are closed on shutdown")
		perUser    = fs.Int("max-conns-per-user", 10, "streams per user on this edge; the oldest is closed (replaced) beyond it")
		maxConns   = fs.Int("max-conns", 10000, "streams on this edge; more get 503")
		perIP      = fs.Int("max-conns-per-ip", 1000, "streams per client address (IPv6: per /64) on this edge, and as many acks in flight, counted apart; more get 429; -1 disables")
		tcpPerIP   = fs.Int("max-tcp-conns-per-ip", 0, "TCP connections per peer address (IPv6: per /64), trusted proxies exempt; more are closed at once; 0: -max-conns-per-ip plus half, at least 64 more; -1 disables")
		tcpConns   = fs.Int("max-tcp-conns", 0, "TCP connections on this edge; one more evicts the longest waiting connection with no stream, or is closed at once if all hold one; 0: -max-conns plus half, at least 64 more")
		proxies    = fs.String("trusted-proxies", "", "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For names the client")
		maxTopics  = fs.Int("max-topics", 16, "topics per stream")
		origins    = fs.String("allowed-origins", "", "comma-separated origins allowed by CORS; * allows any")
		grace      = fs.Duration("broker-grace", 30*time.Second, "how long streams survive a lost Redis link before closing as broker_lost")
		histWindow = fs.Duration("history-window", delivery.DefaultHistoryWindow, "how long events are kept for Last-Event-ID recovery; must match the router's")
		trail      = fs.Bool("trace-writes", true, "count writes in notifications' trails for heraldctl trace (one pipelined Redis command per notification)")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	log, level, err := common.Logger()
	if err != nil {
		return err
	}
	key, err := tokenKey(*secret, *secretFile, *pubKeys != "" || *jwksSource != "")
	if err != nil {
		return err
	}
	trusted, err := parsePrefixes(splitList(*proxies))
	if err != nil {
		return fmt.Errorf("-trusted-proxies: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tr, err := telemetry.Setup(ctx, "herald-sseedge", log)
	if err != nil {
		return err
	}
	defer tr.Shutdown(ctx)

	rdb := common.Redis()
	defer rdb.Close()
	reg := daemon.NewRegistry()
	pres, err := presence.New(rdb, presence.Config{Prefix: common.RedisPrefix, LeaseTTL: *leaseTTL})
	if err != nil {
		return err
	}
	hist, err := history.New(rdb, common.RedisPrefix, delivery.HistoryConfig{Window: *histWindow})
	if err != nil {
		return err
	}
	edge, err := sseedge.New(sseedge.Config{
		EdgeID: *edgeID, JWTSecret: key, JWTIssuer: *issuer, JWTAudience: *audience,
		JWTPublicKeyFile: *pubKeys, JWTJWKS: *jwksSource, JWKSRefresh: *jwksEvery,
		Heartbeat: *heartbeat, Retry: *retry, QueueSize: *queueSize, MaxQueuedBytes: *maxQueued,
		WriteTimeout: *writeTO, RequestTimeout: *requestTO, DrainPeriod: *drain, MaxConnsPerUser: *perUser, MaxConns: *maxConns,
		MaxConnsPerIP: *perIP, MaxTCPConnsPerIP: *tcpPerIP, MaxTCPConns: *tcpConns, TrustedProxies: trusted,
		MaxTopics: *maxTopics, AllowedOrigins: splitList(*origins), BrokerGrace: *grace,
		UserIDs: common.UserIDs(), NoTrail: !*trail,
	}, sseedge.Deps{Redis: rdb, Presence: pres, Logger: log, Registerer: reg, History: hist,
		TracerProvider: tr.Provider})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	log.Info("edge listening", slog.String("http", lis.Addr().String()), slog.String("admin", common.AdminAddr))

	// The admin listener outlives the drain, so that /readyz reports it.
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer stopAdmin()
		return edge.Serve(gctx, lis)
	})
	g.Go(func() error {
		admin := daemon.Admin{Gatherer: reg, Ready: edge.Ready, Level: level}
		return daemon.ServeHTTP(adminCtx, common.AdminAddr, admin.Handler(), 5*time.Second)
	})
	err = g.Wait()
	log.Info("edge stopped")
	return err
}
