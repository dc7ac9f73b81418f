package receipts

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// claimScript takes an expired receipt for its fallback. KEYS: receipts,
// envelopes; ARGV: id, now ms, claim end ms. It returns {"claimed",
// envelope}, {"busy"} (another sweeper holds it), or {"gone"} (acked, fallen
// back already, or never created).
//
//go:embed claim.lua
var claimLua string

var claimScript = redis.NewScript(claimLua)

// fellBackScript marks a claimed receipt as fallen back, keeping it so that
// a late ack can be told from an unknown one, and notes the fallback in the
// notification's trail if it is kept. KEYS: receipts, envelopes, trail (all
// in the user's slot); ARGV: id, now ms.
//
//go:embed fell_back.lua
var fellBackLua string

var fellBackScript = redis.NewScript(fellBackLua)

// Sweeper falls expired receipts back to the offline queue. Any number of
// sweepers may run against the same Redis: a receipt is claimed atomically
// by one of them, so each falls back once (a sweeper that dies between
// queueing the push and marking it may cause a second queueing after the
// claim ends; the FCM worker's dedupe window keeps that from a second push).
type Sweeper struct {
	r     *Receipts
	queue delivery.OfflineQueue
	log   *slog.Logger
	now   func() time.Time // r's clock; tests set it
	// OnFallback, when set, is called for each notification queued for a
	// push, and OnError for each failure to queue one.
	OnFallback func(env *heraldv1.Envelope)
	OnError    func(error)
}

// NewSweeper returns a sweeper that queues fallbacks on queue.
// Its clock is the receipts' Config.Now.
func (r *Receipts) NewSweeper(queue delivery.OfflineQueue, log *slog.Logger) *Sweeper {
	if log == nil {
		log = slog.Default()
	}
	return &Sweeper{r: r, queue: queue, log: log, now: r.cfg.Now}
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
//
//go:embed release.lua
var releaseLua string

var releaseScript = redis.NewScript(releaseLua)

func (s *Sweeper) fallBack(ctx context.Context, n int, member string, score float64, user, id string, now time.Time) error {
	r := s.r
	keys := r.Keys(user)
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
	env, err := delivery.Unmarshal([]byte(res[1]))
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
		return &delivery.OfflineError{Err: err}
	}
	err = fellBackScript.Run(ctx, r.rdb, append(keys, delivery.TraceKey(r.cfg.Prefix, user, id)), id, now.UnixMilli()).Err()
	if err == nil {
		err = r.rdb.ZRem(ctx, r.dueKey(n), member).Err()
	}
	if s.OnFallback != nil {
		s.OnFallback(env)
	}
	s.log.Info("ack deadline passed; pushed instead", slog.String("notification_id", id), slog.String("route", "push"))
	return err
}
