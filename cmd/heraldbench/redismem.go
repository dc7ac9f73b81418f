package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// redisMemConfig is the redismem scenario's flags.
type redisMemConfig struct {
	users         int
	notifications int
	steady        int
}

func redisMemFlags(fs *flag.FlagSet, c *redisMemConfig) {
	fs.IntVar(&c.users, "redismem-users", 5000, "redismem scenario: users notified, round robin")
	fs.IntVar(&c.notifications, "redismem-notifications", 500000, "redismem scenario: notifications sent before Redis memory is read")
	fs.IntVar(&c.steady, "redismem-steady", 100000, "redismem scenario: notifications sent in each steady-state phase (full histories), offline and then online")
}

// redisMem measures what Herald's publisher leaves in Redis and what each
// notification costs Redis, on a redis-server of its own (so that no other
// client's work is counted): -redismem-notifications notifications to
// -redismem-users users with the default history (100 events), trail and
// idempotency settings, then used_memory and the keys by kind. The
// notifications go through delivery.Publisher (PublishBatch of 100, 8
// callers): the router's Redis work without its gRPC. Redis CPU per
// notification is read from INFO commandstats (every command's usec,
// summed) and from the redis-server process, in three phases: filling the
// histories (users offline), with every history full and users offline,
// and with every history full and users online (a lease and a subscriber
// each): the steady state.
func (b *bench) redisMem(ctx context.Context) error {
	const sc = "redismem"
	c := b.cfg.redisMem
	srv, err := startOwnRedis(ctx)
	if err != nil {
		return err
	}
	defer srv.stop()
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr, PoolSize: 16})
	defer rdb.Close()
	reg, err := presence.New(rdb, presence.Config{})
	if err != nil {
		return err
	}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{})
	if err != nil {
		return err
	}
	users := make([]string, c.users)
	for i := range users {
		users[i] = b.tag + "-mem-" + strconv.Itoa(i)
	}
	phase := func(name string, n int, want delivery.Route) error {
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			return err
		}
		p0, _ := readProc(srv.pid)
		b.progress("redismem: %s: %d notifications to %d users", name, n, len(users))
		start := time.Now()
		if err := sendAll(ctx, pub, users, n, want); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		elapsed := time.Since(start)
		p1, _ := readProc(srv.pid)
		usec, calls, err := scriptUsec(ctx, rdb)
		if err != nil {
			return err
		}
		b.rep.add(sc, name+": notifications a second", float64(n)/elapsed.Seconds(), "/s")
		b.rep.add(sc, name+": Redis CPU in scripts per notification (commandstats)", usec/float64(n), "µs")
		b.rep.add(sc, name+": Redis commands per notification, in scripts or not", float64(calls)/float64(n), "calls")
		b.rep.add(sc, name+": redis-server CPU per notification", float64((p1.CPU-p0.CPU).Microseconds())/float64(n), "µs")
		return nil
	}
	if err := phase("filling, offline", c.notifications, delivery.RouteOffline); err != nil {
		return err
	}
	if err := b.redisMemUsage(ctx, rdb, sc, fmt.Sprintf("after %d to %d users", c.notifications, c.users)); err != nil {
		return err
	}
	if c.steady <= 0 {
		return nil
	}
	if err := phase("full histories, offline", c.steady, delivery.RouteOffline); err != nil {
		return err
	}
	// Online: a lease and a subscriber for every user, as an edge holds.
	ps := rdb.Subscribe(ctx)
	defer ps.Close()
	for i := 0; i < len(users); i += 500 {
		chans := make([]string, 0, 500)
		conns := make([]presence.Conn, 0, 500)
		for _, u := range users[i:min(i+500, len(users))] {
			chans = append(chans, delivery.Channel(reg.Prefix(), delivery.UserStream(u)))
			conns = append(conns, presence.Conn{User: u, ID: "c", Edge: "redismem", Since: time.Now()})
		}
		if err := ps.Subscribe(ctx, chans...); err != nil {
			return err
		}
		if err := reg.Lease(ctx, conns...); err != nil {
			return err
		}
	}
	go func() {
		for range ps.Channel(redis.WithChannelSize(4096)) {
		}
	}()
	// Wait until Redis has every subscription.
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, err := rdb.PubSubNumSub(ctx, delivery.Channel(reg.Prefix(), delivery.UserStream(users[len(users)-1]))).Result()
		if err != nil {
			return err
		}
		if n[delivery.Channel(reg.Prefix(), delivery.UserStream(users[len(users)-1]))] > 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("redismem: subscriptions not confirmed within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := phase("full histories, online", c.steady, delivery.RouteOnline); err != nil {
		return err
	}
	return b.redisMemUsage(ctx, rdb, sc, "at the end")
}

// redisMemUsage reports used_memory and the keys by kind.
func (b *bench) redisMemUsage(ctx context.Context, rdb *redis.Client, sc, when string) error {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return err
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			b.rep.add(sc, "used_memory "+when, n/(1<<20), "MiB")
		}
	}
	kinds, sample := map[string]int{}, map[string]string{}
	total := 0
	it := rdb.Scan(ctx, 0, "*", 10000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		kind := "other"
		if i := strings.IndexByte(k, '}'); i >= 0 {
			kind = k[i+1:]
			if j := strings.IndexByte(kind[min(1, len(kind)):], ':'); j >= 0 {
				kind = kind[:j+1]
			}
		}
		if kinds[kind] == 0 {
			sample[kind] = k
		}
		kinds[kind]++
		total++
	}
	if err := it.Err(); err != nil {
		return err
	}
	b.rep.add(sc, "keys "+when, float64(total), "keys")
	for kind, n := range kinds {
		b.rep.add(sc, "keys "+when+", kind "+kind, float64(n), "keys")
		if size, err := rdb.MemoryUsage(ctx, sample[kind], 0).Result(); err == nil {
			b.rep.add(sc, "MEMORY USAGE of one key "+when+", kind "+kind, float64(size), "B")
		}
	}
	return nil
}

// sendAll publishes n notifications to users, round robin, in batches of
// 100 from 8 callers, and fails on any error or a route other than want.
func sendAll(ctx context.Context, pub *delivery.Publisher, users []string, n int, want delivery.Route) error {
	const size, callers = 100, 8
	var (
		mu    sync.Mutex
		next  int
		first error
		wg    sync.WaitGroup
	)
	for range callers {
		wg.Go(func() {
			for {
				mu.Lock()
				from := next
				next += size
				stop := first != nil
				mu.Unlock()
				if stop || from >= n {
					return
				}
				ns := make([]delivery.Notification, 0, size)
				now := time.Now()
				for i := from; i < min(from+size, n); i++ {
					ns = append(ns, delivery.Notification{Env: &heraldv1.Envelope{
						Id: delivery.NewID(now), UserId: users[i%len(users)], Event: "bench",
						Data: notifyData(now, i), AcceptedAt: timestamppb.New(now)}})
				}
				results, errs := pub.PublishBatch(ctx, ns)
				var err error
				for i, e := range errs {
					if e == nil && results[i].Route != want {
						e = fmt.Errorf("route %s, want %s", results[i].Route, want)
					}
					if e != nil {
						err = e
						break
					}
				}
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

// scriptUsec reads INFO commandstats: the usec of the scripts (EVALSHA
// and EVAL: what Redis spent in them, their commands included), and the
// calls of every command but the scripts and INFO (the commands a script
// runs are counted too).
func scriptUsec(ctx context.Context, rdb *redis.Client) (usec float64, calls int64, err error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(info) {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd || name == "info" || strings.HasPrefix(name, "config") {
			continue
		}
		script := name == "evalsha" || name == "eval"
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch {
			case k == "usec" && script:
				n, _ := strconv.ParseFloat(v, 64)
				usec += n
			case k == "calls" && !script:
				n, _ := strconv.ParseInt(v, 10, 64)
				calls += n
			}
		}
	}
	return usec, calls, nil
}

// ownRedis is a redis-server of the scenario's own, without persistence.
type ownRedis struct {
	addr string
	pid  int
	cmd  *exec.Cmd
	dir  string
}

func startOwnRedis(ctx context.Context) (*ownRedis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redismem: redis-server not found on PATH; install it (apt-get install -y redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "heraldbench-redis-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r := &ownRedis{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), pid: cmd.Process.Pid, cmd: cmd, dir: dir}
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("redismem: redis-server on port %d did not answer: %w", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *ownRedis) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	os.RemoveAll(r.dir)
}
