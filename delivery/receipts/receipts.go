// Package receipts keeps the delivery receipts of ack-or-push
// notifications: the acknowledgements that clients send through the edges,
// and the Sweeper that pushes a notification through the offline queue
// when its ack deadline passes first.
package receipts

import (
	"context"
	_ "embed"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Delivery receipts make "ack or push" work: a notification sent with
// DELIVERY_MODE_ACK_OR_PUSH to a connected user leaves a pending receipt;
// a client's acknowledgement removes it; a sweeper pushes the notification
// through the offline queue when its deadline passes first.
//
// Keys, per user (in the user's Redis Cluster slot):
//
//	<prefix>{u:<user>}:receipts      hash: notification id → state|eventID|acceptedMs|ms
//	<prefix>{u:<user>}:receipts:env  hash: notification id → envelope (while pending)
//
// with state pending (ms: the deadline), claimed (ms: the claim's end; a
// sweeper is pushing it), or fellback (ms: when it was queued for a push).
// And the deadline index, sharded so that no key is hot:
//
//	<prefix>{r:<n>}:receipts:due     sorted set: notificationID|user → deadline ms

// The defaults that the zero values of Config stand for.
const (
	DefaultShards     = 16
	DefaultClaim      = 30 * time.Second
	DefaultSweepEvery = 250 * time.Millisecond
	DefaultBatch      = 200
)

// Config configures receipts and their sweepers. The zero value of each
// field means the documented default.
type Config struct {
	// Prefix namespaces the keys, as presence.Config.Prefix does. Default
	// presence.DefaultPrefix.
	Prefix string
	// Shards is how many keys the deadline index is spread over. Default 16.
	// Every router and edge must agree on it.
	Shards int
	// Claim is how long a sweeper holds an expired receipt while it queues
	// the push; a sweeper that dies holding one lets another take it after
	// this. Default 30s.
	Claim time.Duration
	// SweepEvery is how often a sweeper looks for expired receipts. Default
	// 250ms: a fallback comes at most this late.
	SweepEvery time.Duration
	// Batch is the most receipts a sweeper takes from a shard at a time.
	// Default 200.
	Batch int
	// Now is the clock of receipts and their sweepers: what deadlines are
	// compared with and claims start from. Nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = presence.DefaultPrefix
	}
	if c.Shards <= 0 {
		c.Shards = DefaultShards
	}
	if c.Claim <= 0 {
		c.Claim = DefaultClaim
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = DefaultSweepEvery
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Receipts reads and writes delivery receipts. It is the
// delivery.Receipts of a Publisher.
type Receipts struct {
	rdb redis.UniversalClient
	cfg Config
}

var _ delivery.Receipts = (*Receipts)(nil)

// New returns receipts stored through rdb.
func New(rdb redis.UniversalClient, cfg Config) *Receipts {
	cfg.setDefaults()
	return &Receipts{rdb: rdb, cfg: cfg}
}

// dueKey is shard n of the deadline index.
func (r *Receipts) dueKey(n int) string {
	return delivery.DueKey(r.cfg.Prefix, n)
}

// dueKeyFor is the index shard of user.
func (r *Receipts) dueKeyFor(user string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return r.dueKey(int(h.Sum32() % uint32(r.cfg.Shards)))
}

// Keys are user's receipt hashes.
func (r *Receipts) Keys(user string) []string { return delivery.ReceiptKeys(r.cfg.Prefix, user) }

// Schedule puts the deadlines of ack-or-push envs in the index (several in
// one pipeline); errs[i] is envs[i]'s error. The publisher calls it before
// the notify script creates the receipts, so that no receipt exists without
// its deadline; an index entry whose receipt never came (the user was
// offline) is dropped by the sweeper. A sweeper may also see the entry
// before the receipt is created, when the deadline passes while the script
// is on its way: Confirm covers that.
func (r *Receipts) Schedule(ctx context.Context, envs []*heraldv1.Envelope) []error {
	errs := make([]error, len(envs))
	z := func(env *heraldv1.Envelope) redis.Z {
		return redis.Z{Score: float64(env.GetAckBy().AsTime().UnixMilli()), Member: env.GetId() + "|" + env.GetUserId()}
	}
	if len(envs) == 1 {
		errs[0] = r.rdb.ZAdd(ctx, r.dueKeyFor(envs[0].GetUserId()), z(envs[0])).Err()
		return errs
	}
	cmds := make([]*redis.IntCmd, len(envs))
	_, _ = r.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, env := range envs {
			cmds[i] = pl.ZAdd(ctx, r.dueKeyFor(env.GetUserId()), z(env))
		}
		return nil
	})
	for i, cmd := range cmds {
		errs[i] = cmd.Err()
	}
	return errs
}

// confirmMargin is how close to its deadline a receipt must have been
// created for Confirm to put its deadline back in the index: one created
// earlier cannot have been swept before it existed, short of clocks between
// routers further apart than this.
const confirmMargin = 2 * time.Second

// Confirm puts back in the index, in one pipeline, the deadlines of receipts
// the notify script has just created close to (or past) their deadline: a
// sweeper that ran between schedule and the script found no receipt and
// dropped the entry, and the notification would never fall back. The score
// is a millisecond past the deadline, so that such a sweeper, which drops
// only the entry it read (dropScript), leaves the new one. It is best
// effort: the notification was delivered, and a failure leaves only that
// rare case without its fallback.
func (r *Receipts) Confirm(ctx context.Context, envs []*heraldv1.Envelope) error {
	now := r.cfg.Now()
	var late []*heraldv1.Envelope
	for _, env := range envs {
		if now.After(env.GetAckBy().AsTime().Add(-confirmMargin)) {
			late = append(late, env)
		}
	}
	if len(late) == 0 {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for _, env := range late {
			pl.ZAdd(ctx, r.dueKeyFor(env.GetUserId()), redis.Z{Score: float64(env.GetAckBy().AsTime().UnixMilli() + 1),
				Member: env.GetId() + "|" + env.GetUserId()})
		}
		return nil
	})
	return err
}

// dropScript removes an index entry if it still has the score it was read
// with. KEYS: the index shard; ARGV: member, score.
//
//go:embed drop.lua
var dropLua string

var dropScript = redis.NewScript(dropLua)

// AckResult counts what an acknowledgement did.
type AckResult struct {
	Acked   int // pending receipts removed in time
	Late    int // receipts whose notification had already fallen back to a push
	Unknown int // event ids with no receipt (fire-and-forget, or acked before)
	// Latencies are the acked notifications' times from acceptance to ack.
	Latencies []time.Duration
	// IDs are the notification ids acked in time, and LateIDs those acked
	// late, for their trails.
	IDs, LateIDs []string
}

// ackScript acknowledges receipts by event id: ARGV[1] is "ids" (ARGV[3:]
// are event ids) or "upto" (every receipt at or below event id ARGV[3]);
// ARGV[2] is now in ms. It returns acked ids with their acceptance times,
// then "late", then late ids.
//
//go:embed ack.lua
var ackLua string

var ackScript = redis.NewScript(ackLua)

// Ack acknowledges user's notifications at the given user-stream event ids.
func (r *Receipts) Ack(ctx context.Context, user string, eventIDs []uint64, now time.Time) (AckResult, error) {
	if len(eventIDs) == 0 {
		return AckResult{}, nil
	}
	args := []any{"ids", now.UnixMilli()}
	for _, e := range eventIDs {
		args = append(args, strconv.FormatUint(e, 10))
	}
	res, err := r.ack(ctx, user, args, now)
	res.Unknown = max(len(eventIDs)-res.Acked-res.Late, 0)
	return res, err
}

// AckUpTo acknowledges every notification of user at or below the
// user-stream event id upTo: a reconnect with that Last-Event-ID.
func (r *Receipts) AckUpTo(ctx context.Context, user string, upTo uint64, now time.Time) (AckResult, error) {
	return r.ack(ctx, user, []any{"upto", now.UnixMilli(), strconv.FormatUint(upTo, 10)}, now)
}

func (r *Receipts) ack(ctx context.Context, user string, args []any, now time.Time) (AckResult, error) {
	out, err := ackScript.Run(ctx, r.rdb, r.Keys(user), args...).StringSlice()
	if err != nil {
		return AckResult{}, fmt.Errorf("receipts: ack: %w", err)
	}
	var res AckResult
	i := 0
	for ; i+1 < len(out) && out[i] != "late"; i += 2 {
		res.Acked++
		res.IDs = append(res.IDs, out[i])
		if ms, err := strconv.ParseInt(out[i+1], 10, 64); err == nil {
			res.Latencies = append(res.Latencies, now.Sub(time.UnixMilli(ms)))
		}
	}
	if i < len(out) && out[i] == "late" {
		res.LateIDs = out[i+1:]
		res.Late = len(res.LateIDs)
	}
	return res, nil
}
