package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// The poll-vs-push scenario compares what the servers spend to keep clients
// up to date in the two ways: clients polling a JSON endpoint every
// pollEvery, the endpoint doing one Redis read as an account API would, and
// the same number of clients holding an SSE stream that gets one "changed"
// event every pushEvery. Both phases count the CPU time of every server
// process heraldbench can see: its own (the poll endpoint; with -self also
// the edge and the router), the -pids processes and a local redis-server.
// The clients, and the backend that sends the Notify calls, run in child
// processes and are not counted.
const (
	pollEvery = 3 * time.Second
	pushEvery = 30 * time.Second
)

func (b *bench) pollPush(ctx context.Context) error {
	n, d := b.cfg.pollClients, b.cfg.pollDuration
	poll, err := b.pollPhase(ctx, n, d)
	if err != nil {
		return fmt.Errorf("poll: %w", err)
	}
	push, err := b.pushPhase(ctx, n, d)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	sc := fmt.Sprintf("poll vs push, %d clients", n)
	b.rep.addVs(sc, fmt.Sprintf("poll every %s: requests answered", pollEvery), float64(poll.done), "req",
		float64(n)*d.Seconds()/pollEvery.Seconds(), "expected")
	b.rep.add(sc, "poll: requests failed", float64(poll.failed), "req")
	b.rep.add(sc, "poll: server CPU", poll.cpuPerMinute, "s/min")
	for i, p := range b.serverProcs() {
		b.rep.add(sc, "poll: CPU of "+p.Name, poll.each[i], "s/min")
	}
	b.rep.addVs(sc, fmt.Sprintf("push every %s: events delivered", pushEvery), float64(push.done), "events",
		float64(push.sent), "sent")
	b.rep.add(sc, "push: server CPU (streams held, events sent)", push.cpuPerMinute, "s/min")
	for i, p := range b.serverProcs() {
		b.rep.add(sc, "push: CPU of "+p.Name, push.each[i], "s/min")
	}
	if push.sent > 0 {
		b.rep.add(sc, "push: events a second", float64(push.sent)/d.Seconds(), "/s")
		b.rep.add(sc, "push: server CPU per event (streams held, events sent)", push.cpuPerMinute*d.Minutes()*1e6/float64(push.sent), "µs")
	}
	if push.cpuPerMinute > 0 {
		b.rep.add(sc, "CPU of polling ÷ CPU of push", poll.cpuPerMinute/push.cpuPerMinute, "×")
	}
	if poll.firstErr != "" {
		b.rep.note("%s: first poll failure: %s", sc, poll.firstErr)
	}
	b.rep.note("%s: server CPU is the CPU time of %s over each %s phase, per minute", sc, b.serverNames(), d)
	return nil
}

// phaseResult is one phase's outcome.
type phaseResult struct {
	done, failed, sent int
	firstErr           string
	cpuPerMinute       float64   // CPU seconds of the server processes a minute
	each               []float64 // the same, per server process
}

func perMinute(cpu []time.Duration, d time.Duration) []float64 {
	out := make([]float64, len(cpu))
	for i, c := range cpu {
		out[i] = c.Seconds() / d.Minutes()
	}
	return out
}

// serverProcs are the processes whose CPU time counts as the servers':
// this one (the poll endpoint, and with -self the edge and router too), the
// -pids ones and the local redis-server.
func (b *bench) serverProcs() []namedPID {
	procs := b.procs
	if b.sys == nil {
		procs = append([]namedPID{{"heraldbench (poll endpoint)", os.Getpid()}}, procs...)
	}
	return procs
}

func (b *bench) serverNames() string {
	s := ""
	for i, p := range b.serverProcs() {
		if i > 0 {
			s += ", "
		}
		s += p.Name
	}
	return s
}

// serverCPU is the CPU time of each server process.
func (b *bench) serverCPU() []time.Duration {
	procs := b.serverProcs()
	out := make([]time.Duration, len(procs))
	for i, p := range procs {
		if s, err := readProc(p.PID); err == nil {
			out[i] = s.CPU
		}
	}
	return out
}

// cpuSince is the CPU time the server processes spent since before, in all
// and each.
func (b *bench) cpuSince(before []time.Duration) (total time.Duration, each []time.Duration) {
	each = b.serverCPU()
	for i := range each {
		each[i] -= before[i]
		total += each[i]
	}
	return total, each
}

// pollPhase serves the account endpoint and has child processes poll it.
func (b *bench) pollPhase(ctx context.Context, n int, d time.Duration) (phaseResult, error) {
	rdb := daemon.NewRedis(b.cfg.redisAddr, "")
	defer rdb.Close()
	prefix := "heraldbench:" + b.tag + ":acct:"
	b.progress("poll vs push: storing %d accounts", n)
	account := `{"cash":10450.25,"buying_power":20900.5,"positions":[{"symbol":"ACME","qty":120,"avg":41.2},{"symbol":"INIT","qty":15,"avg":310.75}],"orders_open":2,"updated":"2026-11-29T10:00:00Z"}`
	keys := make([]string, 0, n)
	for i := range n {
		keys = append(keys, prefix+"{u:"+b.tag+"-poll-"+strconv.Itoa(i)+"}")
	}
	defer func() {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for i := 0; i < len(keys); i += 1000 {
			_, _ = rdb.Pipelined(bg, func(p redis.Pipeliner) error {
				for _, k := range keys[i:min(i+1000, len(keys))] {
					p.Del(bg, k)
				}
				return nil
			})
		}
	}()
	for i := 0; i < len(keys); i += 1000 {
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys[i:min(i+1000, len(keys))] {
				p.Set(ctx, k, account, time.Hour)
			}
			return nil
		}); err != nil {
			return phaseResult{}, err
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return phaseResult{}, err
	}
	srv := &http.Server{Handler: accountHandler(rdb, prefix), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()

	url := "http://" + lis.Addr().String() + "/v1/account?user="
	nChildren := (n + b.cfg.perChild - 1) / b.cfg.perChild
	children := make([]*child, 0, nChildren)
	defer func() {
		for _, c := range children {
			_ = c.stop()
		}
	}()
	for range nChildren {
		c, err := startChild(ctx)
		if err != nil {
			return phaseResult{}, err
		}
		children = append(children, c)
	}
	b.progress("poll vs push: %d clients polling every %s for %s", n, pollEvery, d)
	cpu0 := b.serverCPU()
	replies := make([]reply, len(children))
	errs := make([]error, len(children))
	var wg sync.WaitGroup
	for j, c := range children {
		first := j * b.cfg.perChild
		cmd := command{Op: "poll", Edge: url, Prefix: b.tag + "-poll-", First: first,
			Count: min(b.cfg.perChild, n-first), Every: pollEvery, For: d}
		wg.Go(func() { replies[j], errs[j] = c.call(cmd) })
	}
	wg.Wait()
	cpu, each := b.cpuSince(cpu0)
	res := phaseResult{cpuPerMinute: cpu.Seconds() / d.Minutes(), each: perMinute(each, d)}
	for j, r := range replies {
		if errs[j] != nil {
			return res, errs[j]
		}
		res.done += int(r.Received)
		res.failed += r.Failed
		if res.firstErr == "" {
			res.firstErr = r.Error
		}
	}
	return res, nil
}

// accountHandler answers GET /v1/account?user=U with the account's JSON,
// read from Redis with one GET.
func accountHandler(rdb redis.UniversalClient, prefix string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user == "" {
			http.Error(w, `{"error":"user is required"}`, http.StatusBadRequest)
			return
		}
		v, err := rdb.Get(r.Context(), prefix+"{u:"+user+"}").Result()
		switch {
		case err == redis.Nil:
			http.Error(w, `{"error":"no such account"}`, http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, `{"error":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, v)
	})
}

// pushPhase holds n streams and sends each user one event every pushEvery.
func (b *bench) pushPhase(ctx context.Context, n int, d time.Duration) (phaseResult, error) {
	prefix := b.tag + "-push-"
	b.progress("poll vs push: opening %d streams", n)
	f, err := openFleet(ctx, b.fleetConfig(prefix, n, ""))
	if err != nil {
		return phaseResult{}, err
	}
	defer f.close()
	time.Sleep(2 * time.Second) // leases written, buffers settled
	if err := f.reset(); err != nil {
		return phaseResult{}, err
	}
	rate := float64(n) / pushEvery.Seconds()
	b.progress("poll vs push: one event a stream every %s (%.0f Notify/s) for %s", pushEvery, rate, d)
	// The backend that sends the events is not part of the server: its
	// gRPC client runs in a child of its own, as the poll clients do.
	sender, err := startChild(ctx)
	if err != nil {
		return phaseResult{}, err
	}
	defer sender.stop()
	cpu0 := b.serverCPU()
	r, err := sender.call(command{Op: "notify", Grpc: b.cfg.grpcAddr, Prefix: prefix, Count: f.conns,
		Rate: rate, For: d, Workers: b.cfg.workers, Stream: b.cfg.stream.use})
	cpu, each := b.cpuSince(cpu0)
	if err == nil && r.Error != "" {
		err = errors.New(r.Error)
	}
	if err != nil {
		return phaseResult{}, fmt.Errorf("poll vs push: sending the events: %w", err)
	}
	sent := r.Load
	got, err := f.waitReceived(uint64(sent.Sent-sent.Failed), 5*time.Second)
	if err != nil {
		return phaseResult{}, err
	}
	return phaseResult{done: int(got.Received), failed: sent.Failed, sent: sent.Sent, firstErr: sent.FirstErr,
		cpuPerMinute: cpu.Seconds() / d.Minutes(), each: perMinute(each, d)}, nil
}

// notifyLoad is a child's part of the push phase: c.Rate Notify calls a
// second for c.For, open loop, through the router at c.Grpc.
func notifyLoad(c command) reply {
	if c.Count < 1 || c.Rate <= 0 || c.For <= 0 {
		return reply{Error: fmt.Sprintf("notify: count %d, rate %v and for %v must be positive", c.Count, c.Rate, c.For)}
	}
	// It dials as the README tells a Go backend to: router.DialOptions.
	conn, err := grpc.NewClient(c.Grpc, append(router.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return reply{Error: err.Error()}
	}
	defer conn.Close()
	call, end, err := sender(context.Background(), heraldv1.NewRouterServiceClient(conn), c.Stream, c.Prefix, c.Count)
	if err != nil {
		return reply{Error: err.Error()}
	}
	res := openLoop(context.Background(), c.Rate, c.For, c.Workers, call)
	end()
	return reply{Load: &res}
}

// poll is a child's part of the poll phase: c.Count clients, users
// c.Prefix+c.First..., each polling c.Edge+user every c.Every, at a random
// phase, for c.For. Clients share a keep-alive connection pool, as a
// browser keeps its connection between polls.
func poll(c command) reply {
	tr := &http.Transport{MaxIdleConnsPerHost: c.Count, IdleConnTimeout: 2 * c.Every}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var (
		ok, failed atomic.Int64
		mu         sync.Mutex
		firstErr   string
	)
	end := time.Now().Add(c.For)
	var wg sync.WaitGroup
	for i := range c.Count {
		url := c.Edge + c.Prefix + strconv.Itoa(c.First+i)
		wg.Go(func() {
			next := time.Now().Add(rand.N(c.Every))
			for next.Before(end) {
				time.Sleep(time.Until(next))
				next = next.Add(c.Every)
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("GET %s: %s", url, resp.Status)
					}
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = err.Error()
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	return reply{Received: uint64(ok.Load()), Failed: int(failed.Load()), Error: firstErr}
}
