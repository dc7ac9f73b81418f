package fcm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/trail"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// item is one record being handled.
type item struct {
	msg  kafka.Message
	env  *heraldv1.Envelope
	task *heraldv1.PushTask // set for the retry topic's records
	// sentKey is the notification's dedupe set (see Worker.sentKey), set
	// by targets.
	sentKey string
}

// push is one message of a batch: one notification to one token.
type push struct {
	item  int
	token string
	// platform is the token's, from the registry; empty for a retry's
	// tokens (see message).
	platform string
	// hash is tokenHash(token), the token's member in the dedupe set.
	hash string
}

// handle pushes a batch and makes every outcome durable: retries and dead
// letters are written to Kafka before handle returns nil.
func (w *Worker) handle(ctx context.Context, batch []kafka.Message) (err error) {
	now := w.deps.Now()
	items := make([]item, 0, len(batch))
	var retries, deads []kafka.Message
	trail := &trails{prefix: w.cfg.RedisPrefix}
	for _, m := range batch {
		it, err := w.decode(m)
		if err != nil {
			w.metrics.notifications.WithLabelValues("undecodable").Inc()
			w.log.Error("fcm: undecodable record dead-lettered", slog.String("topic", m.Topic),
				slog.Int("partition", m.Partition), slog.Int64("offset", m.Offset), slog.Any("err", err))
			deads = append(deads, kafka.Message{Key: m.Key, Value: m.Value, Headers: append(m.Headers,
				kafka.Header{Key: HeaderErrorCode, Value: []byte(CodeUndecodable)})})
			continue
		}
		if !it.env.GetExpiresAt().AsTime().After(now) {
			w.metrics.notifications.WithLabelValues("expired").Inc()
			w.log.Info("fcm: notification expired before its push", w.attrs(it.env)...)
			trail.add(it.env, "fcm_expired_ms", now.UnixMilli())
			continue
		}
		items = append(items, it)
	}

	spans := w.startSends(ctx, items)
	var (
		pushes   []push
		outcomes []outcome
	)
	defer func() { spans.end(pushes, outcomes, err) }()
	pushes, err = w.targets(ctx, items, &deads, trail, now)
	if err != nil {
		return err
	}
	outcomes, err = w.send(ctx, items, pushes, now)
	if err != nil {
		return err
	}
	// Retry times count from the answers, not from the batch's start, so
	// that a Retry-After is honoured in full.
	r, d, err := w.settle(ctx, items, pushes, outcomes, trail, w.deps.Now())
	if err != nil {
		return err
	}
	retries, deads = append(retries, r...), append(deads, d...)
	if err := w.write(ctx, w.retryW, retries); err != nil {
		return err
	}
	if err := w.write(ctx, w.deadW, deads); err != nil {
		return err
	}
	// The trails are written once the outcomes are durable; they are for
	// people, so a failure is only logged.
	if err := trail.flush(ctx, w.deps.Redis); err != nil {
		w.log.Warn("fcm: writing trails failed", slog.Any("err", err))
	}
	return nil
}

func (w *Worker) decode(m kafka.Message) (item, error) {
	if m.Topic == w.cfg.RetryTopic {
		var t heraldv1.PushTask
		if err := proto.Unmarshal(m.Value, &t); err != nil {
			return item{}, err
		}
		if t.GetEnvelope().GetId() == "" {
			return item{}, errors.New("retry record without an envelope")
		}
		return item{msg: m, env: t.GetEnvelope(), task: &t}, nil
	}
	env, err := delivery.Unmarshal(m.Value)
	if err != nil {
		return item{}, err
	}
	if env.GetId() == "" || env.GetUserId() == "" {
		return item{}, errors.New("envelope without an id or a user")
	}
	return item{msg: m, env: env}, nil
}

// targets lists the pushes of a batch: every registered token of the users
// of new notifications, the remaining tokens of retries, less those the
// dedupe window says were pushed already. A notification whose user has no
// device is dead-lettered as NO_DEVICE. The devices and the dedupe sets are
// read in one round trip: a user's devices (one command a user) and each
// notification's set of tokens pushed (one a notification), all keys in
// their user's slot.
func (w *Worker) targets(ctx context.Context, items []item, deads *[]kafka.Message, trail *trails, now time.Time) ([]push, error) {
	lookups := make(map[string]devices.Lookup, len(items))
	pushed := make([]*redis.StringSliceCmd, len(items))
	_, err := w.deps.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range items {
			it := &items[i]
			if it.task == nil {
				user := it.env.GetUserId()
				if _, ok := lookups[user]; !ok {
					lookups[user] = w.deps.Devices.Queue(ctx, p, user)
				}
			}
			it.sentKey = w.sentKey(it.env)
			pushed[i] = p.SMembers(ctx, it.sentKey)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fcm: devices and dedupe lookup: %w", err)
	}
	// Each user's devices, from the lookup, once however many of the
	// user's notifications the batch holds.
	listed := make(map[string][]devices.Device, len(lookups))
	for user, l := range lookups {
		ds, err := l.Devices()
		if err != nil {
			return nil, err
		}
		listed[user] = ds
	}
	var pushes []push
	duplicates := 0
	// The hashes of the tokens this batch pushes, by dedupe set: a record
	// queued twice (a write that Kafka took while its caller saw an error,
	// and the caller's retry), or fetched again after a group rebalance
	// while its first copy waited in the lane, can sit twice in one batch,
	// whose dedupe sets were all read before either was pushed.
	planned := map[string][]string{}
	for i, it := range items {
		// The hashes of the tokens pushed already: none, mostly, and never
		// more than the tokens pushed for this notification.
		done := pushed[i].Val()
		add := func(token, platform string) {
			h := tokenHash(token)
			if slices.Contains(done, h) || slices.Contains(planned[it.sentKey], h) {
				duplicates++
				return
			}
			planned[it.sentKey] = append(planned[it.sentKey], h)
			pushes = append(pushes, push{item: i, token: token, platform: platform, hash: h})
		}
		if it.task != nil {
			for _, t := range it.task.GetTokens() {
				add(t, "")
			}
			continue
		}
		ds := listed[it.env.GetUserId()]
		if len(ds) == 0 {
			w.metrics.notifications.WithLabelValues("no_device").Inc()
			w.log.Info("fcm: no registered device; dead-lettered", w.attrs(it.env)...)
			*deads = append(*deads, w.deadLetter(it, CodeNoDevice, "the user has no registered device", 0, 0, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", CodeNoDevice)
			continue
		}
		for _, d := range ds {
			add(d.Token, d.Platform)
		}
	}
	if duplicates > 0 {
		w.metrics.messages.WithLabelValues("duplicate").Add(float64(duplicates))
	}
	return pushes, nil
}

// send sends the pushes through FCM, within the quota, in SendEach calls
// of at most w.chunk messages, all of a round at once. A user's
// notifications go in rounds, one after the other, so that they reach FCM in
// order: the n-th notification of a user in the batch goes in round n.
func (w *Worker) send(ctx context.Context, items []item, pushes []push, now time.Time) ([]outcome, error) {
	outcomes := make([]outcome, len(pushes))
	round := make([]int, len(items))
	seen := map[string]int{}
	for i, it := range items {
		round[i] = seen[it.env.GetUserId()]
		seen[it.env.GetUserId()]++
	}
	var rounds [][]int // push indices by round
	for j, p := range pushes {
		r := round[p.item]
		for len(rounds) <= r {
			rounds = append(rounds, nil)
		}
		rounds[r] = append(rounds[r], j)
	}
	for _, idx := range rounds {
		var wg sync.WaitGroup
		var waitErr error
		for start := 0; start < len(idx); start += w.chunk {
			part := idx[start:min(start+w.chunk, len(idx))]
			msgs := make([]*messaging.Message, len(part))
			for k, j := range part {
				p := pushes[j]
				msgs[k] = message(items[p.item].env, p.token, p.platform, now, w.cfg.MaxDataBytes)
			}
			if w.limiter != nil {
				if waitErr = w.limiter.WaitN(ctx, len(msgs)); waitErr != nil {
					break
				}
			}
			select {
			case w.calls <- struct{}{}:
			case <-ctx.Done():
				waitErr = ctx.Err()
			}
			if waitErr != nil {
				break
			}
			// Each call fills the outcomes of its own part.
			wg.Go(func() {
				defer func() { <-w.calls }()
				w.sendEach(ctx, msgs, part, outcomes)
			})
		}
		wg.Wait()
		if waitErr != nil {
			return nil, fmt.Errorf("fcm: waiting to send: %w", waitErr)
		}
	}
	return outcomes, nil
}

// sendEach makes one SendEach call, within SendTimeout, and sets
// outcomes[part[k]] from the answer to msgs[k].
func (w *Worker) sendEach(ctx context.Context, msgs []*messaging.Message, part []int, outcomes []outcome) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.SendTimeout)
	defer cancel()
	t0 := time.Now()
	resp, err := w.deps.Sender.SendEach(ctx, msgs)
	w.metrics.sendSeconds.Observe(time.Since(t0).Seconds())
	for k, j := range part {
		switch {
		case err != nil:
			// The whole call failed (the SDK refused the batch, or ctx
			// ended): every message is retried.
			outcomes[j] = outcome{class: retryable, code: "SEND_FAILED", msg: err.Error()}
		case k < len(resp.Responses) && resp.Responses[k] != nil:
			outcomes[j] = classify(resp.Responses[k].Error, w.deps.Now())
		default:
			outcomes[j] = outcome{class: retryable, code: "UNKNOWN", msg: "no response for the message"}
		}
	}
}

// trails collects the fields the worker adds to notifications' trails.
type trails struct {
	prefix string
	adds   []trailAdd
}

type trailAdd struct {
	env    *heraldv1.Envelope
	fields []any
}

// add queues fields for env's trail, if the router keeps one (env.Traced).
func (t *trails) add(env *heraldv1.Envelope, fields ...any) {
	if !env.GetTraced() {
		return
	}
	t.adds = append(t.adds, trailAdd{env, fields})
}

func (t *trails) flush(ctx context.Context, rdb redis.UniversalClient) error {
	if len(t.adds) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, a := range t.adds {
			trail.Add(ctx, p, t.prefix, a.env.GetUserId(), a.env.GetId(), a.fields...)
		}
		return nil
	})
	return err
}
