package testenv

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of the test's own: redis-server processes on
// free ports, joined with `redis-cli --cluster create`, and stopped at
// cleanup.
type Cluster struct {
	// Nodes are every node, primaries and replicas, in start order; which
	// is which changes with a failover (see Primaries).
	Nodes []*RedisServer
	tb    testing.TB
}

// StartCluster starts primaries × (1 + replicas) redis-servers in cluster
// mode, with extra arguments, and joins them into a cluster whose primaries
// each have replicas replicas, then waits until every node sees every slot
// served.
func StartCluster(tb testing.TB, primaries, replicas int, extra ...string) *Cluster {
	tb.Helper()
	cli := RequireBinary(tb, "redis-cli", "apt-get install -y redis-server")
	c := &Cluster{tb: tb}
	addrs := make([]string, 0, primaries*(1+replicas))
	for range primaries * (1 + replicas) {
		// A short node timeout makes a failed primary's replica take over
		// within a couple of seconds.
		args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"}, extra...)
		s := StartRedisServer(tb, args...)
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(primaries, replicas)
	return c
}

// Seeds are the addresses a client is given: every node's.
func (c *Cluster) Seeds() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client returns a cluster client seeded with every node, closed at cleanup.
func (c *Cluster) Client() *redis.ClusterClient {
	// As cmd/internal/daemon's NewRedis: the slot map is reread every 2 s,
	// so that a dead primary's replica is found soon after it takes over.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Seeds(), ClusterStateReloadInterval: 2 * time.Second})
	c.tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// node returns a plain client of one node, closed at cleanup.
func (c *Cluster) node(addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	c.tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// info returns one node's INFO section as fields.
func info(ctx context.Context, rdb *redis.Client, section string) (map[string]string, error) {
	text, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string)
	for _, line := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}

// Role returns "master" or "slave" for the node at addr.
func (c *Cluster) Role(addr string) string {
	c.tb.Helper()
	f, err := replication(addr)
	if err != nil {
		c.tb.Fatalf("INFO replication of %s: %v", addr, err)
	}
	return f["role"]
}

// replication returns the node at addr's INFO replication fields.
func replication(addr string) (map[string]string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	return info(context.Background(), rdb, "replication")
}

// Node returns the node at addr, or nil.
func (c *Cluster) Node(addr string) *RedisServer {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// replicasOf returns the addresses of the replicas of the primary at addr:
// a replica names its primary by address in INFO replication.
func (c *Cluster) replicasOf(primary string) []string {
	var out []string
	for _, n := range c.Nodes {
		if n.Addr == primary {
			continue
		}
		f, err := replication(n.Addr)
		if err == nil && f["role"] == "slave" && f["master_host"]+":"+f["master_port"] == primary {
			out = append(out, n.Addr)
		}
	}
	return out
}

// waitPrimary waits up to 30s until one of addrs is a primary (and, if old
// is not empty, old is a replica), and returns it.
func waitPrimary(addrs []string, old string) (string, error) {
	role := func(addr string) string {
		f, _ := replication(addr)
		return f["role"]
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, a := range addrs {
			if role(a) == "master" && (old == "" || role(old) == "slave") {
				return a, nil
			}
		}
	}
	return "", fmt.Errorf("none of %v took over within 30s", addrs)
}

// Primaries returns the addresses of the nodes that are primaries now.
func (c *Cluster) Primaries() []string {
	c.tb.Helper()
	var out []string
	for _, n := range c.Nodes {
		if c.Role(n.Addr) == "master" {
			out = append(out, n.Addr)
		}
	}
	return out
}

// WaitHealthy waits until every node reports cluster_state:ok and sees the
// expected numbers of primaries and replicas.
func (c *Cluster) WaitHealthy(primaries, replicas int) {
	c.tb.Helper()
	ctx := context.Background()
	WaitFor(c.tb, 30*time.Second, "the cluster to be healthy on every node", func() bool {
		for _, n := range c.Nodes {
			rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
			text, err := rdb.ClusterInfo(ctx).Result()
			shards, err2 := rdb.ClusterShards(ctx).Result()
			_ = rdb.Close()
			if err != nil || err2 != nil || !strings.Contains(text, "cluster_state:ok") || len(shards) != primaries {
				return false
			}
			for _, s := range shards {
				healthy := 0
				for _, node := range s.Nodes {
					if node.Health == "online" {
						healthy++
					}
				}
				if healthy != 1+replicas {
					return false
				}
			}
		}
		return true
	})
}

// Failover makes a replica of the primary at addr take over its slots with
// CLUSTER FAILOVER (the coordinated kind: the replica first catches up with
// the primary, so no acknowledged write is lost), and waits until both
// agree. It returns the new primary's address. Unlike the other methods it
// reports failure as an error, so that it may run beside the test's
// goroutine.
func (c *Cluster) Failover(primary string) (string, error) {
	replicas := c.replicasOf(primary)
	if len(replicas) == 0 {
		return "", fmt.Errorf("primary %s has no replica", primary)
	}
	rdb := redis.NewClient(&redis.Options{Addr: replicas[0]})
	defer rdb.Close()
	if err := rdb.Do(context.Background(), "CLUSTER", "FAILOVER").Err(); err != nil {
		return "", fmt.Errorf("CLUSTER FAILOVER on %s: %w", replicas[0], err)
	}
	return waitPrimary(replicas[:1], primary)
}

// Kill stops the primary at addr with SIGKILL and waits until one of its
// replicas has taken over (after the cluster's node timeout). It returns
// the new primary's address. Writes the primary acknowledged but had not
// yet replicated are lost, as Redis replication is asynchronous. The node
// stays down until Revive.
func (c *Cluster) Kill(primary string) (string, error) {
	replicas := c.replicasOf(primary)
	if len(replicas) == 0 {
		return "", fmt.Errorf("primary %s has no replica", primary)
	}
	c.Node(primary).Stop()
	return waitPrimary(replicas, "")
}

// Revive starts the node at addr again, after Kill: it rejoins the cluster
// as a replica of the primary that took its slots.
func (c *Cluster) Revive(addr string) {
	c.tb.Helper()
	c.Node(addr).Start()
	WaitFor(c.tb, 30*time.Second, addr+" to rejoin as a replica", func() bool {
		return c.Role(addr) == "slave"
	})
}

// Stats returns one node's pub/sub figures: the calls of each pub/sub
// command (INFO commandstats, which counts commands a script runs too) and
// the cluster bus messages it sent for classic and for sharded publishes.
func (c *Cluster) Stats(addr string) PubSubStats {
	c.tb.Helper()
	ctx := context.Background()
	rdb := c.node(addr)
	cmds, err := info(ctx, rdb, "commandstats")
	if err != nil {
		c.tb.Fatalf("INFO commandstats of %s: %v", addr, err)
	}
	text, err := rdb.ClusterInfo(ctx).Result()
	if err != nil {
		c.tb.Fatalf("CLUSTER INFO of %s: %v", addr, err)
	}
	bus := make(map[string]string)
	for _, line := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			bus[k] = v
		}
	}
	calls := func(cmd string) int64 {
		// cmdstat_spublish:calls=12,usec=...
		v := cmds["cmdstat_"+cmd]
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	num := func(k string) int64 {
		n, _ := strconv.ParseInt(bus[k], 10, 64)
		return n
	}
	return PubSubStats{
		Publish:         calls("publish"),
		SPublish:        calls("spublish"),
		BusPublishSent:  num("cluster_stats_messages_publish_sent"),
		BusShardPubSent: num("cluster_stats_messages_publishshard_sent"),
		BusPublishRecv:  num("cluster_stats_messages_publish_received"),
		BusShardPubRecv: num("cluster_stats_messages_publishshard_received"),
	}
}

// PubSubStats are one node's pub/sub figures; see Cluster.Stats.
type PubSubStats struct {
	Publish, SPublish               int64
	BusPublishSent, BusShardPubSent int64
	BusPublishRecv, BusShardPubRecv int64
}

// ShardSubscribers returns, for each client of the node at addr that holds
// shard channel subscriptions, how many it holds (CLIENT LIST's ssub).
func (c *Cluster) ShardSubscribers(addr string) []int {
	c.tb.Helper()
	text, err := c.node(addr).ClientList(context.Background()).Result()
	if err != nil {
		c.tb.Fatalf("CLIENT LIST of %s: %v", addr, err)
	}
	var out []int
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "ssub="); ok {
				if n, _ := strconv.Atoi(v); n > 0 {
					out = append(out, n)
				}
			}
		}
	}
	return out
}

// MoveSlot migrates slot, with its keys, from the primary that serves it
// to the primary at to, as redis-cli --cluster reshard does for each slot:
// IMPORTING on the target, MIGRATING on the source, MIGRATE of the keys,
// then SETSLOT NODE on every primary.
func (c *Cluster) MoveSlot(slot int, to string) error {
	ctx := context.Background()
	clients := map[string]*redis.Client{}
	ids := map[string]string{}
	for _, addr := range c.Primaries() {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		id, err := rdb.ClusterMyID(ctx).Result()
		if err != nil {
			return err
		}
		clients[addr], ids[addr] = rdb, id
	}
	if clients[to] == nil {
		return fmt.Errorf("slot %d: %s is not a primary", slot, to)
	}
	var from string
	shards, err := clients[to].ClusterShards(ctx).Result()
	if err != nil {
		return err
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if int64(slot) < r.Start || int64(slot) > r.End {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" {
					from = net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
				}
			}
		}
	}
	if from == "" {
		return fmt.Errorf("slot %d: no owner found", slot)
	}
	if from == to {
		return nil
	}
	src, dst := clients[from], clients[to]
	steps := []func() error{
		func() error { return dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[from]).Err() },
		func() error { return src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to]).Err() },
		func() error {
			host, port, _ := strings.Cut(to, ":")
			for {
				keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
				if err != nil || len(keys) == 0 {
					return err
				}
				args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
				for _, k := range keys {
					args = append(args, k)
				}
				if err := src.Do(ctx, args...).Err(); err != nil {
					return err
				}
			}
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("move slot %d from %s to %s: %w", slot, from, to, err)
		}
	}
	// The target first, then the source, then the others, as redis-cli does.
	order := []string{to, from}
	for addr := range clients {
		if addr != to && addr != from {
			order = append(order, addr)
		}
	}
	for _, addr := range order {
		if err := clients[addr].Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", ids[to]).Err(); err != nil {
			return fmt.Errorf("move slot %d: SETSLOT NODE on %s: %w", slot, addr, err)
		}
	}
	return nil
}

// KeySlot returns the slot of key, as the cluster computes it.
func (c *Cluster) KeySlot(key string) int {
	c.tb.Helper()
	n, err := c.node(c.Nodes[0].Addr).ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		c.tb.Fatalf("CLUSTER KEYSLOT: %v", err)
	}
	return int(n)
}
