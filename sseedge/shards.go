package sseedge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// shardedSubscriber is the link to a Redis Cluster. Channels are shard
// channels (SSUBSCRIBE): a message published with SPUBLISH reaches only the
// shard that owns the channel's slot, so the edge keeps one connection per
// primary and subscribes each channel on the primary that owns it.
//
// go-redis reconnects a broken Pub/Sub connection by sending one SSUBSCRIBE
// with all of its channels, which a cluster refuses when they span slots, so
// this subscriber never lets a connection reconnect: when one breaks, or a
// node answers with an error, it closes it, reads the slot map again, and
// subscribes the connection's channels afresh on their owners. A slot that
// moves (a failover, or resharding) shows as an unrequested SUNSUBSCRIBE,
// and is checked every auditEvery as well. When a channel is confirmed on its
// new connection, the hub has its streams catch up from history.
//
// One goroutine, run, does all of this subscriber's I/O but the reading: it
// reads the slot map and sends every SSUBSCRIBE and SUNSUBSCRIBE, in order,
// with mu not held, so that a slow primary delays only the channels it owns.
// subscribe and unsubscribe only record what the hub wants, and wake it.
type shardedSubscriber struct {
	cc  *redis.ClusterClient
	hub *hub
	out *outage
	log *slog.Logger
	// timeout bounds each command run sends.
	timeout time.Duration
	// ctx bounds the connections' readers; cancel ends them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// wake asks run to resubscribe the orphans now.
	wake chan struct{}

	mu      sync.Mutex
	slots   slotMap
	links   map[string]*shardLink // by primary address
	where   map[string]*shardLink // subscribed channel → its connection
	orphans map[string]struct{}   // wanted channels subscribed nowhere
	// leaving holds the channels to unsubscribe, by their connection.
	leaving map[*shardLink][]string
	// stale says the slot map must be read before orphans are placed: a
	// connection broke, or a slot moved.
	stale  bool
	closed bool
}

// shardLink is one sharded Pub/Sub connection, to one primary.
type shardLink struct {
	addr string
	rdb  *redis.Client
	ps   *redis.PubSub
	// unsubs counts the SUNSUBSCRIBE replies run asked for, by channel, so
	// that they are not taken for a moved slot; guarded by
	// shardedSubscriber.mu.
	unsubs map[string]int
}

var _ subscriber = (*shardedSubscriber)(nil)

// auditEvery is how often the subscriber reads the slot map to find
// channels whose slot moved without the old owner saying so.
const auditEvery = 15 * time.Second

// newShardedSubscriber returns the link to the cluster behind cc. When some
// channels stay subscribed nowhere for longer than grace (their shard is
// down), the streams that read them are closed as broker_lost, so that their
// clients reconnect, possibly to another edge; the other streams go on.
func newShardedSubscriber(ctx context.Context, cc *redis.ClusterClient, h *hub, grace, timeout time.Duration) *shardedSubscriber {
	s := &shardedSubscriber{
		cc: cc, hub: h, log: h.log, timeout: timeout,
		wake:    make(chan struct{}, 1),
		links:   make(map[string]*shardLink),
		where:   make(map[string]*shardLink),
		orphans: make(map[string]struct{}),
		leaving: make(map[*shardLink][]string),
	}
	s.out = &outage{log: h.log, grace: grace, lost: s.dropOrphans}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return s
}

// dropOrphans closes the streams that read a channel subscribed nowhere.
func (s *shardedSubscriber) dropOrphans() {
	s.mu.Lock()
	orphans := make([]string, 0, len(s.orphans))
	for ch := range s.orphans {
		orphans = append(orphans, ch)
	}
	s.mu.Unlock()
	closed := 0
	for _, ch := range orphans {
		for _, st := range s.hub.readers(ch) {
			st.close(CloseBrokerLost)
			closed++
		}
	}
	s.log.Error("redis shard pub/sub down beyond the grace period; closing the streams that read it",
		slog.Duration("grace", s.out.grace), slog.Int("channels", len(orphans)), slog.Int("streams", closed))
}

// subscribe hands channels to run, which subscribes them on the primaries
// that own them, and retries those it cannot subscribe now (their primary
// is failing over, say) while the hub waits for the confirmations. It does
// no I/O.
func (s *shardedSubscriber) subscribe(_ context.Context, channels ...string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("sseedge: subscriber closed")
	}
	for _, ch := range channels {
		if _, placed := s.where[ch]; !placed {
			s.orphans[ch] = struct{}{}
		}
	}
	s.mu.Unlock()
	s.kick()
	return nil
}

// place subscribes the orphans on their owners, one SSUBSCRIBE per slot (a
// cluster refuses one that spans slots). A channel whose SSUBSCRIBE could
// not be sent is left an orphan, for run to retry. Only run calls it.
func (s *shardedSubscriber) place(ctx context.Context) error {
	type order struct {
		l     *shardLink
		chans []string
	}
	var (
		orders []order
		errs   []error
	)
	s.mu.Lock()
	orphans := make([]string, 0, len(s.orphans))
	for ch := range s.orphans {
		orphans = append(orphans, ch)
	}
	for slot, chans := range bySlot(orphans) {
		addr := s.slots.owner(slot)
		if addr == "" {
			errs = append(errs, fmt.Errorf("no primary serves slot %d", slot))
			continue
		}
		// Placed before the SSUBSCRIBE is sent, so that its confirmation
		// counts.
		l := s.linkLocked(addr)
		for _, ch := range chans {
			s.where[ch] = l
			delete(s.orphans, ch)
		}
		orders = append(orders, order{l, chans})
	}
	s.mu.Unlock()
	for _, o := range orders {
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := o.l.ps.SSubscribe(cctx, o.chans...)
		cancel()
		if err == nil {
			continue
		}
		errs = append(errs, err)
		s.mu.Lock()
		for _, ch := range o.chans {
			if s.where[ch] == o.l {
				s.orphanLocked(ch)
			}
		}
		s.stale = true
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// orphanLocked records channels as wanted but subscribed nowhere.
func (s *shardedSubscriber) orphanLocked(channels ...string) {
	for _, ch := range channels {
		delete(s.where, ch)
		s.orphans[ch] = struct{}{}
	}
}

// linkLocked returns the connection to the primary at addr, opening it.
func (s *shardedSubscriber) linkLocked(addr string) *shardLink {
	if l, ok := s.links[addr]; ok {
		return l
	}
	opt := s.cc.Options()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, Username: opt.Username, Password: opt.Password, TLSConfig: opt.TLSConfig,
		Dialer: opt.Dialer, DialTimeout: opt.DialTimeout, ReadTimeout: opt.ReadTimeout,
		WriteTimeout: opt.WriteTimeout, PoolSize: 1,
	})
	l := &shardLink{addr: addr, rdb: rdb, ps: rdb.SSubscribe(s.ctx), unsubs: make(map[string]int)}
	s.links[addr] = l
	s.wg.Go(func() { s.read(l) })
	return l
}

// unsubscribe hands channels to run, to unsubscribe. Best effort: a
// channel whose SUNSUBSCRIBE is lost stays subscribed until its connection
// is next replaced. It does no I/O.
func (s *shardedSubscriber) unsubscribe(_ context.Context, channels ...string) error {
	s.mu.Lock()
	for _, ch := range channels {
		delete(s.orphans, ch)
		if l, ok := s.where[ch]; ok {
			delete(s.where, ch)
			s.leaving[l] = append(s.leaving[l], ch)
		}
	}
	s.mu.Unlock()
	s.kick()
	return nil
}

// unsubscribeLeaving sends the SUNSUBSCRIBEs asked for, one per slot. Only
// run calls it.
func (s *shardedSubscriber) unsubscribeLeaving(ctx context.Context) {
	s.mu.Lock()
	leaving := s.leaving
	s.leaving = make(map[*shardLink][]string)
	for l, chans := range leaving {
		if s.links[l.addr] != l {
			// Lost: its channels went with it.
			delete(leaving, l)
			continue
		}
		for _, ch := range chans {
			l.unsubs[ch]++
		}
	}
	s.mu.Unlock()
	for l, chans := range leaving {
		for _, group := range bySlot(chans) {
			cctx, cancel := context.WithTimeout(ctx, s.timeout)
			if err := l.ps.SUnsubscribe(cctx, group...); err != nil && ctx.Err() == nil {
				s.log.Debug("shard unsubscribe failed", slog.String("node", l.addr), slog.Any("err", err))
			}
			cancel()
		}
	}
}

// read hands the connection's messages to the hub until it breaks.
func (s *shardedSubscriber) read(l *shardLink) {
	for {
		msg, err := l.ps.ReceiveTimeout(s.ctx, pingEvery)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				if err := l.ps.Ping(s.ctx); err == nil {
					continue
				}
			}
			s.lose(l, err)
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			s.mu.Lock()
			asked := false
			if n := l.unsubs[m.Channel]; m.Kind == "sunsubscribe" && n > 0 {
				asked = true
				if n == 1 {
					delete(l.unsubs, m.Channel)
				} else {
					l.unsubs[m.Channel] = n - 1
				}
			}
			mine := !asked && s.where[m.Channel] == l
			if mine && m.Kind == "sunsubscribe" {
				// Not asked for: the node no longer serves the slot.
				s.orphanLocked(m.Channel)
				s.stale = true
			}
			s.mu.Unlock()
			switch {
			case mine && m.Kind == "ssubscribe":
				s.hub.confirmed(m.Channel)
			case mine && m.Kind == "sunsubscribe":
				s.kick()
			}
		case *redis.Message:
			s.hub.deliver(m.Channel, stringAsBytes(m.Payload)) // read, never kept (decode copies)
		}
	}
}

// lose drops a broken connection and makes its channels orphans.
func (s *shardedSubscriber) lose(l *shardLink, err error) {
	s.mu.Lock()
	if s.links[l.addr] == l {
		delete(s.links, l.addr)
	}
	delete(s.leaving, l)
	s.stale = true
	n := 0
	for ch, at := range s.where {
		if at == l {
			s.orphanLocked(ch)
			n++
		}
	}
	s.mu.Unlock()
	_ = l.ps.Close()
	_ = l.rdb.Close()
	s.log.Warn("redis shard pub/sub connection lost; resubscribing its channels elsewhere",
		slog.String("node", l.addr), slog.Int("channels", n), slog.Any("err", err))
	s.kick()
}

func (s *shardedSubscriber) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run unsubscribes what the hub no longer wants, subscribes orphans (new
// channels, and those whose connection broke or slot moved), at once when
// asked and every 200ms while some remain, and audits the slot map every
// auditEvery.
func (s *shardedSubscriber) run(ctx context.Context) {
	audit := time.NewTicker(auditEvery)
	defer audit.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-retry:
		case <-audit.C:
			if err := s.audit(ctx); err != nil {
				s.log.Warn("reading the cluster's slot map failed", slog.Any("err", err))
			}
		}
		retry = nil
		left, err := s.replace(ctx)
		if left == 0 {
			s.out.up()
			continue
		}
		s.out.down(err)
		retry = time.After(200 * time.Millisecond)
	}
}

// replace sends the SUNSUBSCRIBEs asked for, then subscribes every orphan
// on its owner, reading the slot map first when it may be stale. It returns
// how many orphans are left.
func (s *shardedSubscriber) replace(ctx context.Context) (int, error) {
	s.unsubscribeLeaving(ctx)
	s.mu.Lock()
	if s.closed || len(s.orphans) == 0 {
		s.mu.Unlock()
		return 0, nil
	}
	reload := s.stale || s.slots.empty()
	s.mu.Unlock()
	if reload {
		if err := s.reload(ctx); err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.orphans), err
		}
	}
	err := s.place(ctx)
	s.mu.Lock()
	left := len(s.orphans)
	if left > 0 {
		s.stale = true
	}
	s.mu.Unlock()
	if reload {
		s.log.Info("resubscribed shard channels on their primaries", slog.Int("left", left))
	}
	return left, err
}

// audit reads the slot map and makes orphans of the channels subscribed on
// a node that no longer owns their slot.
func (s *shardedSubscriber) audit(ctx context.Context) error {
	if err := s.reload(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch, l := range s.where {
		if s.slots.owner(keySlot(ch)) != l.addr {
			s.orphanLocked(ch)
		}
	}
	if len(s.orphans) > 0 {
		s.kick()
	}
	return nil
}

// reload reads the slot map from the cluster (CLUSTER SHARDS).
func (s *shardedSubscriber) reload(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	shards, err := s.cc.ClusterShards(ctx).Result()
	if err != nil {
		return fmt.Errorf("sseedge: CLUSTER SHARDS: %w", err)
	}
	tls := s.cc.Options().TLSConfig != nil
	var m slotMap
	for _, sh := range shards {
		addr := ""
		for _, n := range sh.Nodes {
			if n.Role != "master" || n.Health != "online" {
				continue
			}
			host, port := n.Endpoint, n.Port
			if host == "" || host == "?" {
				host = n.IP
			}
			if tls && n.TLSPort != 0 {
				port = n.TLSPort
			}
			addr = net.JoinHostPort(host, strconv.FormatInt(port, 10))
		}
		if addr == "" {
			continue
		}
		for _, r := range sh.Slots {
			m = append(m, slotRange{start: uint16(r.Start), end: uint16(r.End), addr: addr})
		}
	}
	sort.Slice(m, func(i, j int) bool { return m[i].start < m[j].start })
	s.mu.Lock()
	s.slots, s.stale = m, false
	s.mu.Unlock()
	return nil
}

// state: a connection per primary that owns a subscribed channel; orphans
// wait for their owner to be found and reached.
func (s *shardedSubscriber) state() linkState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return linkState{links: len(s.links), orphaned: len(s.orphans)}
}

// Close ends every connection and waits for their readers.
func (s *shardedSubscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	links := s.links
	s.links = make(map[string]*shardLink)
	s.mu.Unlock()
	s.cancel()
	for _, l := range links {
		_ = l.ps.Close()
		_ = l.rdb.Close()
	}
	s.wg.Wait()
	return nil
}
