package delivery

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

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

// ReceiptsConfig configures receipts. The zero value of each field means the
// documented default.
type ReceiptsConfig struct {
	// Prefix namespaces the keys, as presence.Config.Prefix does.
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
}

func (c *ReceiptsConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "herald:"
	}
	if c.Shards <= 0 {
		c.Shards = 16
	}
	if c.Claim <= 0 {
		c.Claim = 30 * time.Second
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = 250 * time.Millisecond
	}
	if c.Batch <= 0 {
		c.Batch = 200
	}
}

// Receipts reads and writes delivery receipts.
type Receipts struct {
	rdb redis.UniversalClient
	cfg ReceiptsConfig
}

// NewReceipts returns receipts stored through rdb.
func NewReceipts(rdb redis.UniversalClient, cfg ReceiptsConfig) *Receipts {
	cfg.setDefaults()
	return &Receipts{rdb: rdb, cfg: cfg}
}

// dueKey is shard n of the deadline index.
func (r *Receipts) dueKey(n int) string {
	return dueKeyName(r.cfg.Prefix, n)
}

// dueKeyFor is the index shard of user.
func (r *Receipts) dueKeyFor(user string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return r.dueKey(int(h.Sum32() % uint32(r.cfg.Shards)))
}

// schedule puts a notification's deadline in the index. It is written before
// the notify script creates the receipt, so that no receipt exists without
// its deadline; an index entry whose receipt never came (the user was
// offline) is dropped by the sweeper. A sweeper may also see the entry before
// the receipt is created, when the deadline passes while the script is on
// its way: confirm covers that.
func (r *Receipts) schedule(ctx context.Context, user, id string, deadline time.Time) error {
	return r.rdb.ZAdd(ctx, r.dueKeyFor(user), redis.Z{Score: float64(deadline.UnixMilli()), Member: id + "|" + user}).Err()
}

// confirmMargin is how close to its deadline a receipt must have been
// created for confirm to put its deadline back in the index: one created
// earlier cannot have been swept before it existed, short of clocks between
// routers further apart than this.
const confirmMargin = 2 * time.Second

// confirm puts back in the index, in one pipeline, the deadlines of receipts
// the notify script has just created close to (or past) their deadline: a
// sweeper that ran between schedule and the script found no receipt and
// dropped the entry, and the notification would never fall back. The score
// is a millisecond past the deadline, so that such a sweeper, which drops
// only the entry it read (dropScript), leaves the new one. It is best
// effort: the notification was delivered, and a failure leaves only that
// rare case without its fallback.
func (r *Receipts) confirm(ctx context.Context, envs []*heraldv1.Envelope) error {
	now := time.Now()
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

// receiptCreated reports whether the notify script created env's receipt:
// env is ack-or-push, and was published to an edge, not as a duplicate.
func receiptCreated(env *heraldv1.Envelope, r Result, err error) bool {
	return env.GetAckBy() != nil && err == nil && r.Route == RouteOnline && !r.Duplicate
}

// dropScript removes an index entry if it still has the score it was read
// with. KEYS: the index shard; ARGV: member, score.
var dropScript = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)

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
var ackScript = redis.NewScript(`
local all = redis.call('HGETALL', KEYS[1])
local want = {}
local upto = nil
if ARGV[1] == 'upto' then upto = tonumber(ARGV[3]) else
  for i = 3, #ARGV do want[ARGV[i]] = true end
end
local acked, late = {}, {}
for i = 1, #all, 2 do
  local id, v = all[i], all[i + 1]
  local st, eid, acc = string.match(v, '^(%a+)|(%d+)|(%d+)|')
  if st and ((upto and tonumber(eid) <= upto) or want[eid]) then
    if st == 'pending' then
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      table.insert(acked, id); table.insert(acked, acc)
    elseif st == 'fellback' then
      redis.call('HDEL', KEYS[1], id)
      table.insert(late, id)
    elseif st == 'claimed' then
      table.insert(late, id)
    end
  end
end
table.insert(acked, 'late')
for _, id in ipairs(late) do table.insert(acked, id) end
return acked
`)

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
	out, err := ackScript.Run(ctx, r.rdb, receiptKeys(r.cfg.Prefix, user), args...).StringSlice()
	if err != nil {
		return AckResult{}, fmt.Errorf("delivery: ack: %w", err)
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

// claimScript takes an expired receipt for its fallback. KEYS: receipts,
// envelopes; ARGV: id, now ms, claim end ms. It returns {"claimed",
// envelope}, {"busy"} (another sweeper holds it), or {"gone"} (acked, fallen
// back already, or never created).
var claimScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {'gone'} end
local st, eid, acc, ms = string.match(v, '^(%a+)|(%d+)|(%d+)|(%d+)$')
if st == 'pending' or (st == 'claimed' and tonumber(ms) < tonumber(ARGV[2])) then
  local env = redis.call('HGET', KEYS[2], ARGV[1])
  if not env then redis.call('HDEL', KEYS[1], ARGV[1]); return {'gone'} end
  redis.call('HSET', KEYS[1], ARGV[1], 'claimed|' .. eid .. '|' .. acc .. '|' .. ARGV[3])
  return {'claimed', env}
end
if st == 'claimed' then return {'busy'} end
return {'gone'}
`)

// fellBackScript marks a claimed receipt as fallen back, keeping it so that
// a late ack can be told from an unknown one, and notes the fallback in the
// notification's trail if it is kept. KEYS: receipts, envelopes, trail (all
// in the user's slot); ARGV: id, now ms.
var fellBackScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local eid, acc = string.match(v, '^%a+|(%d+)|(%d+)|')
  redis.call('HSET', KEYS[1], ARGV[1], 'fellback|' .. eid .. '|' .. acc .. '|' .. ARGV[2])
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'fell_back_ms', ARGV[2]) end
return 0
`)

// Sweeper falls expired receipts back to the offline queue. Any number of
// sweepers may run against the same Redis: a receipt is claimed atomically
// by one of them, so each falls back once (a sweeper that dies between
// queueing the push and marking it may cause a second queueing after the
// claim ends; the FCM worker's dedupe window keeps that from a second push).
type Sweeper struct {
	r     *Receipts
	queue OfflineQueue
	log   *slog.Logger
	now   func() time.Time
	// OnFallback, when set, is called for each notification queued for a
	// push, and OnError for each failure to queue one.
	OnFallback func(env *heraldv1.Envelope)
	OnError    func(error)
}

// NewSweeper returns a sweeper that queues fallbacks on queue.
func (r *Receipts) NewSweeper(queue OfflineQueue, log *slog.Logger) *Sweeper {
	if log == nil {
		log = slog.Default()
	}
	return &Sweeper{r: r, queue: queue, log: log, now: time.Now}
}

// Run sweeps until ctx is done.
func (s *Sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.r.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for n := range s.r.cfg.Shards {
			for {
				more, err := s.sweep(ctx, n)
				if err != nil && ctx.Err() == nil {
					s.log.Warn("receipt sweep failed", slog.Int("shard", n), slog.Any("err", err))
					if s.OnError != nil {
						s.OnError(err)
					}
				}
				if !more || err != nil {
					break
				}
			}
		}
	}
}

// sweep falls back one batch of shard n's expired receipts and reports
// whether there may be more.
func (s *Sweeper) sweep(ctx context.Context, n int) (bool, error) {
	r := s.r
	now := s.now()
	due, err := r.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: r.dueKey(n), ByScore: true, Start: "-inf", Stop: strconv.FormatInt(now.UnixMilli(), 10),
		Count: int64(r.cfg.Batch),
	}).Result()
	if err != nil || len(due) == 0 {
		return false, err
	}
	// The fallbacks run side by side, so that the offline queue's writer
	// batches them into a few produce requests.
	var (
		mu   sync.Mutex
		errs []error
		g    errgroup.Group
	)
	g.SetLimit(64)
	for _, z := range due {
		member, _ := z.Member.(string)
		id, user, ok := strings.Cut(member, "|")
		if !ok {
			r.rdb.ZRem(ctx, r.dueKey(n), member)
			continue
		}
		g.Go(func() error {
			if err := s.fallBack(ctx, n, member, z.Score, user, id, now); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	return len(due) == r.cfg.Batch, errors.Join(errs...)
}

// releaseScript puts a receipt this sweeper claimed back to pending, when
// its fallback could not be queued, so that the next sweep tries again
// instead of waiting for the claim to end. KEYS: receipts; ARGV: id, the
// claim's end ms.
var releaseScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local st, eid, acc, ms = string.match(v, '^(%a+)|(%d+)|(%d+)|(%d+)$')
if st == 'claimed' and ms == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'pending|' .. eid .. '|' .. acc .. '|' .. ms)
  return 1
end
return 0
`)

func (s *Sweeper) fallBack(ctx context.Context, n int, member string, score float64, user, id string, now time.Time) error {
	r := s.r
	keys := receiptKeys(r.cfg.Prefix, user)
	until := now.Add(r.cfg.Claim)
	res, err := claimScript.Run(ctx, r.rdb, keys, id, now.UnixMilli(), until.UnixMilli()).StringSlice()
	if err != nil {
		return fmt.Errorf("claim %s: %w", id, err)
	}
	switch res[0] {
	case "gone":
		return dropScript.Run(ctx, r.rdb, []string{r.dueKey(n)}, member, strconv.FormatFloat(score, 'f', -1, 64)).Err()
	case "busy":
		// Another sweeper holds it: look again when its claim ends, unless
		// it is done with it by then (XX: only if still indexed).
		return r.rdb.ZAddXX(ctx, r.dueKey(n), redis.Z{Score: float64(until.UnixMilli()), Member: member}).Err()
	}
	env, err := Unmarshal([]byte(res[1]))
	if err != nil {
		return fmt.Errorf("receipt %s: %w", id, err)
	}
	// The device folds the push with the SSE event it may have shown.
	if env.GetPush().GetCollapseKey() == "" {
		if env.Push == nil {
			env.Push = &heraldv1.PushOptions{}
		}
		env.Push.CollapseKey = env.GetId()
	}
	if err := s.queue.Enqueue(ctx, env); err != nil {
		// Release the claim and look again in a second.
		_ = releaseScript.Run(ctx, r.rdb, keys[:1], id, until.UnixMilli()).Err()
		_ = r.rdb.ZAddXX(ctx, r.dueKey(n), redis.Z{Score: float64(now.Add(time.Second).UnixMilli()), Member: member}).Err()
		return &OfflineError{Err: err}
	}
	err = fellBackScript.Run(ctx, r.rdb, append(keys, TraceKey(r.cfg.Prefix, user, id)), id, now.UnixMilli()).Err()
	if err == nil {
		err = r.rdb.ZRem(ctx, r.dueKey(n), member).Err()
	}
	if s.OnFallback != nil {
		s.OnFallback(env)
	}
	s.log.Info("ack deadline passed; pushed instead", slog.String("notification_id", id), slog.String("route", "push"))
	return err
}
