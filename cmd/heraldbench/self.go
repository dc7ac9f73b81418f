package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/herald/embedded"
	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/cmd/internal/telemetry"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/router"
	"github.com/herald-push/herald/sseedge"
)

// system is Herald run inside heraldbench (-self): the router and one edge,
// set up as cmd/herald sets them up, on a key prefix of their own. There is
// no Kafka and no FCM worker: the scenarios keep their users online.
type system struct {
	grpcAddr  string
	edgeURL   string
	redisAddr string
	secret    []byte
	stop      func() error
}

// selfTuning is the settings of the -self system that differ from the
// defaults when asked: zero keeps a default.
type selfTuning struct {
	leaseTTL  time.Duration // presence lease TTL (renewed every third of it)
	heartbeat time.Duration // the edge's heartbeat period
}

// startSystem starts the router and an edge on redisAddr ("mini" starts an
// embedded miniredis). maxConns is the edge's stream limit.
func startSystem(ctx context.Context, redisAddr string, maxConns int, tune selfTuning) (*system, error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	var closers []func()
	fail := func(err error) (*system, error) {
		cancel()
		_ = g.Wait()
		for _, c := range closers {
			c()
		}
		return nil, err
	}
	if redisAddr == "mini" {
		mr, err := embedded.StartRedis()
		if err != nil {
			return fail(err)
		}
		closers = append(closers, mr.Close)
		redisAddr = mr.Addr()
	}
	rdb := daemon.NewRedis(redisAddr, "")
	closers = append(closers, func() { rdb.Close() })
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fail(fmt.Errorf("redis %s: %w", redisAddr, err))
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	tag := make([]byte, 4)
	_, _ = rand.Read(tag)
	prefix := "heraldbench:" + hex.EncodeToString(tag) + ":"

	// Tracing is on when the OTEL_* environment asks, as in the binaries.
	tr, err := telemetry.Setup(ctx, "heraldbench", log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { _ = tr.Shutdown(ctx) })
	sys, err := embedded.Start(gctx, g, rdb, embedded.Config{
		Prefix: prefix, LeaseTTL: tune.leaseTTL,
		Publisher: delivery.PublisherConfig{TracerProvider: tr.Provider},
		Edge:      sseedge.Config{JWTSecret: secret, DrainPeriod: time.Second, MaxConns: maxConns, Heartbeat: tune.heartbeat},
	}, embedded.Deps{Router: router.Deps{Logger: log, TracerProvider: tr.Provider},
		Edge: sseedge.Deps{Logger: log, TracerProvider: tr.Provider}}, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	return &system{
		grpcAddr:  sys.GRPC.Addr().String(),
		edgeURL:   "http://" + sys.HTTP.Addr().String(),
		redisAddr: redisAddr,
		secret:    secret,
		stop: func() error {
			cancel()
			err := g.Wait()
			for _, c := range closers {
				c()
			}
			if err == context.Canceled {
				err = nil
			}
			return err
		},
	}, nil
}
