package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// batcher makes the i-th NotifyBatch call of a run through client: size
// notifications, round robin over users with prefix. want is the route
// every notification must take.
func batcher(client heraldv1.RouterServiceClient, size int, prefix string, users int, want heraldv1.Route) callFunc {
	return func(ctx context.Context, i int, sched time.Time) error {
		req := &heraldv1.NotifyBatchRequest{Notifications: make([]*heraldv1.NotifyRequest, size)}
		for k := range size {
			n := i*size + k
			req.Notifications[k] = &heraldv1.NotifyRequest{
				UserId: prefix + strconv.Itoa(n%users), Event: "bench", Data: notifyData(sched, n)}
		}
		resp, err := client.NotifyBatch(ctx, req)
		if err != nil {
			return err
		}
		if len(resp.GetResults()) != size {
			return fmt.Errorf("%d results for %d notifications", len(resp.GetResults()), size)
		}
		for k, r := range resp.GetResults() {
			if c := codes.Code(r.GetCode()); c != codes.OK {
				return fmt.Errorf("notification %d of the batch: %v: %s", k, c, r.GetMessage())
			}
			if r.GetResponse().GetRoute() != want {
				return fmt.Errorf("notification %d of the batch: route %s, want %s", k, r.GetResponse().GetRoute(), want)
			}
		}
		return nil
	}
}

// batchLoad is a child's part of the router batch run: c.Workers callers
// each send NotifyBatch calls of c.Size notifications, one after another,
// for c.For, through the router at c.Grpc, round robin over users
// c.Prefix+0 .. c.Prefix+c.Count-1, every one of which must take route
// c.Route.
func batchLoad(c command) reply {
	if c.Count < 1 || c.Size < 1 || c.Workers < 1 || c.For <= 0 {
		return reply{Error: fmt.Sprintf("batch: count %d, size %d, workers %d and for %v must be positive", c.Count, c.Size, c.Workers, c.For)}
	}
	route, ok := heraldv1.Route_value[c.Route]
	if !ok {
		return reply{Error: "batch: unknown route " + c.Route}
	}
	conn, err := grpc.NewClient(c.Grpc, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return reply{Error: err.Error()}
	}
	defer conn.Close()
	client := heraldv1.NewRouterServiceClient(conn)
	res := closedLoop(context.Background(), c.Workers, c.For, batcher(client, c.Size, c.Prefix, c.Count, heraldv1.Route(route)))
	return reply{Load: &res}
}

// routerBatch measures NotifyBatch, closed loop: -batch-callers callers
// each send batches of -batch notifications, one after another, to the
// users of f (prefix). Its rate is compared to pipelined PUBLISH, which is
// what a batch is built on, measured in -pairs pairs of rounds, a round of
// PUBLISH then one of NotifyBatch (pairs.go). The callers run in a child process, so that the
// router's CPU is its own (with -self, with the edge's). It then runs the
// same load to users with no connection, for the CPU of the router alone:
// the edge has nothing to write then.
func (b *bench) routerBatch(ctx context.Context, f *fleet, prefix string) error {
	size, callers := b.cfg.batch, b.cfg.batchCallers
	if size <= 0 || callers <= 0 {
		return nil
	}
	rt, haveRouter := b.proc("router")
	rpid, haveRedis := b.proc("redis-server")
	haveRedis = haveRedis && rpid.Name == "redis-server"
	caller, err := startChild(ctx)
	if err != nil {
		return err
	}
	defer caller.stop()
	var measureErr error
	measure := func(prefix string, users int, d time.Duration, want heraldv1.Route) (res loadResult, cpu, redisCPU time.Duration) {
		cpu0, _ := readProc(rt.PID)
		redis0, _ := readProc(rpid.PID)
		r, err := caller.call(command{Op: "batch", Grpc: b.cfg.grpcAddr, Prefix: prefix, Count: users,
			Size: size, Workers: callers, For: d, Route: want.String()})
		cpu1, _ := readProc(rt.PID)
		redis1, _ := readProc(rpid.PID)
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		if err != nil {
			measureErr = fmt.Errorf("router batch: %w", err)
			return loadResult{}, 0, 0
		}
		return *r.Load, cpu1.CPU - cpu0.CPU, redis1.CPU - redis0.CPU
	}

	// Online, in pairs of rounds: pipelined PUBLISH, then NotifyBatch.
	pairs := b.cfg.pairs
	baseD, subjD := roundLength(b.cfg.baseDuration, pairs), roundLength(b.cfg.duration, pairs)
	var (
		res             loadResult // the rounds together
		cpu, redisCPU   time.Duration
		sent            int
		received        uint64
		rates, pubRates []float64 // per round
		pubSum          float64
	)
	b.progress("router: NotifyBatch of %d, %d callers, %d pairs of rounds: pipelined PUBLISH for %s, then NotifyBatch for %s",
		size, callers, pairs, baseD, subjD)
	err = inPairs(ctx, pairs, func(int) error {
		rate, err := baselinePublish(ctx, b.cfg.redisAddr, 4, b.cfg.pipeline, baseD)
		if err != nil {
			return fmt.Errorf("PUBLISH baseline: %w", err)
		}
		pubRates, pubSum = append(pubRates, rate), pubSum+rate
		return nil
	}, func(int) error {
		if err := f.reset(); err != nil {
			return err
		}
		r, c, rc := measure(prefix, f.conns, subjD, heraldv1.Route_ROUTE_ONLINE)
		if measureErr != nil {
			return measureErr
		}
		got, err := f.waitReceived(uint64((r.Sent-r.Failed)*size), 5*time.Second)
		if err != nil {
			return err
		}
		res.addRound(r)
		cpu, redisCPU, sent, received = cpu+c, redisCPU+rc, sent+r.Sent*size, received+got.Received
		rates = append(rates, float64(r.Sent*size)/r.Elapsed.Seconds())
		return nil
	})
	if err != nil {
		return err
	}
	sc := "router batch"
	rate := float64(sent) / res.Elapsed.Seconds()
	b.rep.addPaired(sc, fmt.Sprintf("notifications a second, batches of %d, closed loop, %d callers", size, callers), rate, "/s",
		pairedRatios(pubRates, rates), "pipelined PUBLISH")
	b.rep.add(sc, fmt.Sprintf("Redis PUBLISH, pipelines of %d, 4 clients, in the rounds between", b.cfg.pipeline), pubSum/float64(len(pubRates)), "msg/s")
	b.rep.addVs(sc, "notifications a second, against the no-op call", rate, "/s", b.noop.Rate, "no-op gRPC")
	b.rep.add(sc, "failed batches", float64(res.Failed), "calls")
	b.rep.addVs(sc, "delivered", float64(received), "events", float64(sent), "sent")
	if res.FirstErr != "" {
		b.rep.note("router batch: first failure: %s", res.FirstErr)
	}
	b.rep.addVs(sc, "NotifyBatch round trip p50", ms(res.Latency.quantile(0.5)), "ms", ms(b.noop.Latency.quantile(0.5)), "no-op gRPC")
	b.rep.addVs(sc, "NotifyBatch round trip p99", ms(res.Latency.quantile(0.99)), "ms", ms(b.noop.Latency.quantile(0.99)), "no-op gRPC")
	what := "router CPU per notification"
	if b.sys != nil {
		what = "process CPU per notification (router, edge)"
	}
	if haveRouter && sent > 0 {
		b.rep.addVs(sc, what, float64(cpu.Microseconds())/float64(sent), "µs", b.noopCPU, "no-op gRPC")
	}
	if haveRedis && sent > 0 {
		b.rep.add(sc, "redis-server CPU per notification", float64(redisCPU.Microseconds())/float64(sent), "µs")
	}

	if !haveRouter || b.sys == nil {
		return nil
	}
	// The same to users nobody is connected as: no edge work.
	d := b.cfg.baseDuration
	b.progress("router: NotifyBatch of %d to users offline, %d callers for %s", size, callers, d)
	res, cpu, redisCPU = measure(b.tag+"-rtoff-", f.conns, d, heraldv1.Route_ROUTE_OFFLINE)
	if measureErr != nil {
		return measureErr
	}
	if sent = res.Sent * size; sent == 0 {
		return nil
	}
	b.rep.addVs(sc, "notifications a second to users offline", float64(sent)/res.Elapsed.Seconds(), "/s",
		b.publishRate, "pipelined PUBLISH")
	b.rep.addVs(sc, "router CPU per notification to users offline", float64(cpu.Microseconds())/float64(sent), "µs",
		b.noopCPU, "no-op gRPC")
	if haveRedis {
		b.rep.add(sc, "redis-server CPU per notification to users offline", float64(redisCPU.Microseconds())/float64(sent), "µs")
	}
	if res.Failed > 0 {
		b.rep.note("router batch, users offline: %d failed: %s", res.Failed, res.FirstErr)
	}
	return nil
}
