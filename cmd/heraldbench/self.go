package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
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
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fail(fmt.Errorf("embedded redis: %w", err))
		}
		closers = append(closers, mr.Close)
		g.Go(func() error {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-t.C:
					mr.FastForward(time.Second)
				}
			}
		})
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

	pres, err := presence.New(rdb, presence.Config{Prefix: prefix, LeaseTTL: tune.leaseTTL})
	if err != nil {
		return fail(err)
	}
	pub, err := delivery.NewPublisher(rdb, pres, delivery.PublisherConfig{})
	if err != nil {
		return fail(err)
	}
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub, Logger: log})
	if err != nil {
		return fail(err)
	}
	edge, err := sseedge.New(sseedge.Config{JWTSecret: secret, DrainPeriod: time.Second, MaxConns: maxConns, Heartbeat: tune.heartbeat},
		sseedge.Deps{Redis: rdb, Presence: pres, Logger: log})
	if err != nil {
		return fail(err)
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		grpcLis.Close()
		return fail(err)
	}
	g.Go(func() error { return svc.Serve(gctx, grpcLis) })
	g.Go(func() error { return edge.Serve(gctx, httpLis) })
	return &system{
		grpcAddr:  grpcLis.Addr().String(),
		edgeURL:   "http://" + httpLis.Addr().String(),
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
