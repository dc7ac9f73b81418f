package fcm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Sender sends FCM messages. *messaging.Client implements it.
type Sender interface {
	SendEach(ctx context.Context, messages []*messaging.Message) (*messaging.BatchResponse, error)
}

var _ Sender = (*messaging.Client)(nil)

// Config configures a Worker. The zero value of each field but Kafka.Brokers
// means the documented default.
type Config struct {
	Kafka delivery.KafkaConfig
	// The topics: defaults delivery.DefaultOfflineTopic, DefaultRetryTopic
	// and DefaultDeadLetterTopic.
	OfflineTopic, RetryTopic, DeadLetterTopic string
	// GroupID is the consumer group of the offline topic. Default
	// "herald-fcm". The retry topic is consumed by GroupID + ".retry", so
	// that waiting for a retry's time never holds up fresh notifications.
	GroupID string
	// BatchSize is the most notifications handled together. Default 500,
	// FCM's SendEach limit; a notification for a user with several devices
	// may make a batch send more messages, in chunks of 500.
	BatchSize int
	// BatchWait is how long a batch waits to fill. Default 5ms.
	BatchWait time.Duration
	// MaxAttempts is the retry budget in attempts. Default 5.
	MaxAttempts int
	// MaxRetryAge is the retry budget in time since the first failure.
	// Default 1h.
	MaxRetryAge time.Duration
	// BackoffBase and BackoffMax shape the retries' exponential backoff
	// (base × 2^(attempt-1), capped, with full jitter). Defaults 1s and 5m.
	// A Retry-After from FCM is a floor under it.
	BackoffBase, BackoffMax time.Duration
	// DedupeWindow is how long the worker remembers that it pushed a
	// notification to a token, so that a record delivered twice (after a
	// crash or a rebalance) is not pushed twice. Default 10m. It costs about
	// 100 bytes of Redis per push in the window.
	DedupeWindow time.Duration
	// RedisPrefix namespaces the dedupe keys. Default "herald:".
	RedisPrefix string
	// UserIDs says whether logs show user ids or their hashes (the default).
	UserIDs delivery.UserIDs
	// SessionTimeout is how long the group waits for a silent member (a
	// killed worker) before its partitions go to the others. Default 10s.
	SessionTimeout time.Duration
	// MaxDataBytes is the largest payload pushed as is; a larger one is
	// left out of the push (see DataTruncated). Default 3000, below FCM's
	// 4 KB message limit with room for the other fields.
	MaxDataBytes int
	// Concurrency is how many batches of each topic are pushed at once.
	// Every record goes to one of Concurrency lanes by its key (the user),
	// and a lane pushes one batch at a time, so one user's notifications
	// are pushed in order while the lanes' SendEach calls, 50 sends each,
	// overlap FCM's latency. Default 8: at FCM's 20-40 ms a send, enough to
	// reach the default quota from one worker.
	Concurrency int
	// QuotaPerMinute is the Firebase project's FCM quota in messages a
	// minute. Default 600,000, FCM's default quota. Negative means no
	// limit.
	QuotaPerMinute int
	// QuotaShare is the share of the quota this worker uses: it sends at
	// most QuotaShare × QuotaPerMinute / 60 messages a second, in bursts of
	// at most a tenth of a second's worth, so that the worker itself never
	// causes a 429. Default 0.95, a margin for the SDK's own retries of a
	// 503 and for clock drift; workers sharing a project split it (0.95/N
	// each).
	QuotaShare float64
	// SendTimeout bounds one SendEach call: its messages, sent at once, and
	// the SDK's own retries of each. Default 10s, hundreds of times FCM's
	// usual 20-40 ms, yet short enough that a hung call frees its lane and
	// its call slot, and the partition's commits go on. Its messages are
	// then retried through the retry topic, as DEADLINE_EXCEEDED.
	SendTimeout time.Duration
}

func (c *Config) setDefaults() error {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.OfflineTopic, delivery.DefaultOfflineTopic)
	def(&c.RetryTopic, delivery.DefaultRetryTopic)
	def(&c.DeadLetterTopic, delivery.DefaultDeadLetterTopic)
	def(&c.GroupID, "herald-fcm")
	def(&c.RedisPrefix, "herald:")
	defD := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defD(&c.BatchWait, 5*time.Millisecond)
	defD(&c.MaxRetryAge, time.Hour)
	defD(&c.BackoffBase, time.Second)
	defD(&c.BackoffMax, 5*time.Minute)
	defD(&c.DedupeWindow, 10*time.Minute)
	defD(&c.SessionTimeout, 10*time.Second)
	defD(&c.SendTimeout, 10*time.Second)
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.MaxDataBytes == 0 {
		c.MaxDataBytes = 3000
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.QuotaPerMinute == 0 {
		c.QuotaPerMinute = 600000
	}
	if c.QuotaShare == 0 {
		c.QuotaShare = 0.95
	}
	if len(c.Kafka.Brokers) == 0 {
		return errors.New("fcm: kafka brokers are required")
	}
	if c.BatchSize < 1 || c.MaxAttempts < 1 || c.BatchWait < 0 || c.MaxRetryAge <= 0 ||
		c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase || c.DedupeWindow < time.Second || c.MaxDataBytes < 0 || c.SessionTimeout < 100*time.Millisecond || c.SendTimeout < 0 ||
		c.Concurrency < 1 || c.QuotaShare < 0 || c.QuotaShare > 1 {
		return fmt.Errorf("fcm: invalid config %+v", *c)
	}
	return nil
}

// Deps are a Worker's dependencies.
type Deps struct {
	Sender  Sender
	Devices *delivery.Devices
	// Redis holds the dedupe window; the same Redis as Devices.
	Redis redis.UniversalClient
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the worker's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Worker drains the offline and retry topics into FCM.
type Worker struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	metrics *metrics

	retryW, deadW *kafka.Writer
	// limiter keeps the sends under the quota; nil when there is none.
	limiter *rate.Limiter
	// chunk is the most messages of one SendEach call: maxPerCall, or less
	// when the limiter's burst is smaller.
	chunk int
	// calls holds a token per SendEach call in flight, at most two per
	// lane in all (800 sends at 8 lanes): enough for the quota at FCM's
	// latency, few enough that a burst never opens thousands of
	// connections at once.
	calls chan struct{}
}

// New returns a Worker. Run starts it.
func New(cfg Config, deps Deps) (*Worker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if deps.Sender == nil || deps.Devices == nil || deps.Redis == nil {
		return nil, errors.New("fcm: a sender, a device registry and redis are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	retryW, err := delivery.NewWriter(cfg.Kafka, cfg.RetryTopic)
	if err != nil {
		return nil, err
	}
	deadW, err := delivery.NewWriter(cfg.Kafka, cfg.DeadLetterTopic)
	if err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, deps: deps, log: deps.Logger, metrics: m, retryW: retryW, deadW: deadW, chunk: maxPerCall,
		calls: make(chan struct{}, 2*cfg.Concurrency)}
	if cfg.QuotaPerMinute > 0 {
		perSecond := cfg.QuotaShare * float64(cfg.QuotaPerMinute) / 60
		// Bursts of a tenth of a second's worth: sends granted together may
		// reach FCM bunched up, later than granted, and FCM is not known to
		// allow much at once. A much smaller burst would waste the quota
		// that goes unused while every lane waits on FCM or Redis.
		burst := max(1, int(perSecond/10))
		w.chunk = min(maxPerCall, burst)
		w.limiter = rate.NewLimiter(rate.Limit(perSecond), burst)
	}
	return w, nil
}

// Topics are the worker's topics, for delivery.EnsureTopics.
func (w *Worker) Topics() []string {
	return []string{w.cfg.OfflineTopic, w.cfg.RetryTopic, w.cfg.DeadLetterTopic}
}

// drainTimeout bounds finishing the batches in hand at shutdown.
const drainTimeout = 30 * time.Second

// maxPerCall is the most messages of one SendEach call. The SDK sends 50
// messages of a call at once and queues the rest behind them, so the worker
// makes calls of 50 and runs a batch's calls at once instead; FCM's own
// limit is 500.
const maxPerCall = 50

// Run consumes until ctx is done, then finishes the batches in hand,
// commits them, and leaves the consumer groups.
func (w *Worker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, retry := range []bool{false, true} {
		topic, group := w.cfg.OfflineTopic, w.cfg.GroupID
		if retry {
			topic, group = w.cfg.RetryTopic, w.cfg.GroupID+".retry"
		}
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:  w.cfg.Kafka.Brokers,
			GroupID:  group,
			Topic:    topic,
			MinBytes: 1,
			MaxBytes: 10 << 20,
			// A fetch returns as soon as a record arrives; MaxWait only
			// bounds an idle one. kafka-go asks the broker to answer 1s
			// before it gives up on the connection, and a late answer (a
			// busy broker) costs a reconnection and a backoff: the margin
			// keeps that out of the hand-off's tail.
			MaxWait:               2 * time.Second,
			StartOffset:           kafka.FirstOffset,
			CommitInterval:        0, // commit synchronously, when told
			WatchPartitionChanges: true,
			SessionTimeout:        w.cfg.SessionTimeout,
			HeartbeatInterval:     min(w.cfg.SessionTimeout/3, 3*time.Second),
			RebalanceTimeout:      w.cfg.SessionTimeout,
			// Bounds one fetch's read on the network; kafka-go's default, set
			// here with its dialer's 10s and its coordinator's 5s.
			ReadBatchTimeout: 10 * time.Second,
			ReadBackoffMin:   50 * time.Millisecond,
			ReadBackoffMax:   time.Second,
			ErrorLogger:      kafka.LoggerFunc(w.kafkaError),
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.consume(ctx, r, retry)
			if err := r.Close(); err != nil && errs[i] == nil {
				errs[i] = fmt.Errorf("fcm: close %s reader: %w", topic, err)
			}
		}()
	}
	wg.Wait()
	errs = append(errs, w.retryW.Close(), w.deadW.Close())
	return errors.Join(errs...)
}

func (w *Worker) kafkaError(format string, args ...any) {
	w.log.Warn("kafka: " + fmt.Sprintf(format, args...))
}

// item is one record being handled.
type item struct {
	msg  kafka.Message
	env  *heraldv1.Envelope
	task *heraldv1.PushTask // set for the retry topic's records
}

// consume runs one topic's loop: it fetches records, hands each to the lane
// of its key, and commits each partition as far as every record before is
// handled and its outcome durable.
func (w *Worker) consume(ctx context.Context, r *kafka.Reader, retry bool) error {
	topic := r.Config().Topic
	offs := newOffsets()
	// Records fetched and not yet handled, at most a full batch per lane:
	// past that the fetch waits.
	slots := make(chan struct{}, w.cfg.Concurrency*w.cfg.BatchSize)
	lanes := make([]chan *entry, w.cfg.Concurrency)
	var lanesWG sync.WaitGroup
	for i := range lanes {
		lanes[i] = make(chan *entry, w.cfg.BatchSize)
		lanesWG.Add(1)
		go func() {
			defer lanesWG.Done()
			w.lane(ctx, lanes[i], offs, slots)
		}()
	}
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		w.commitLoop(ctx, r, offs)
	}()

fetching:
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break fetching
		}
		m, err := r.FetchMessage(ctx)
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				break
			}
			w.log.Warn("fcm: fetch failed", slog.String("topic", topic), slog.Any("err", err))
			sleep(ctx, time.Second)
			continue
		}
		if retry {
			// A retry waits for its time, and holds up the records behind
			// it in the partition, which were written later.
			if wait := notBefore(m).Sub(w.deps.Now()); wait > 0 && !sleep(ctx, wait) {
				<-slots
				break
			}
		} else {
			w.observeHandoff(m)
		}
		e := offs.track(m)
		select {
		case lanes[laneOf(m.Key, len(lanes))] <- e:
		case <-ctx.Done():
			<-slots
			break fetching
		}
	}
	for _, l := range lanes {
		close(l)
	}
	lanesWG.Wait()
	offs.close()
	<-committed
	return nil
}

// observeHandoff records how long the record took from the router's
// acceptance of the notification to this fetch.
func (w *Worker) observeHandoff(m kafka.Message) {
	env, err := delivery.Unmarshal(m.Value)
	if err != nil || env.GetAcceptedAt() == nil {
		return
	}
	w.metrics.handoff.Observe(max(w.deps.Now().Sub(env.GetAcceptedAt().AsTime()), 0).Seconds())
}

// laneOf is the lane of a record's key: one user's records always share a
// lane, so they are pushed in order.
func laneOf(key []byte, lanes int) int {
	h := fnv.New32a()
	h.Write(key)
	return int(h.Sum32() % uint32(lanes))
}

// lane pushes the records of its channel in batches, one batch at a time,
// until the channel is closed. Once ctx is done it finishes the batch in
// hand and drops the rest: they are not committed, so they come again.
func (w *Worker) lane(ctx context.Context, in <-chan *entry, offs *offsets, slots <-chan struct{}) {
	for {
		first, ok := <-in
		if !ok {
			return
		}
		batch := w.gather(first, in)
		if ctx.Err() == nil && w.finish(ctx, batch) {
			offs.done(batch)
		}
		for range batch {
			<-slots
		}
	}
}

// gather adds to first what the lane receives within BatchWait, up to
// BatchSize.
func (w *Worker) gather(first *entry, in <-chan *entry) []*entry {
	batch := []*entry{first}
	t := time.NewTimer(w.cfg.BatchWait)
	defer t.Stop()
	for len(batch) < w.cfg.BatchSize {
		select {
		case e, ok := <-in:
			if !ok {
				return batch
			}
			batch = append(batch, e)
		case <-t.C:
			return batch
		}
	}
	return batch
}

// finish handles a batch, trying again while it fails: the records after it
// in their partitions cannot be committed without it. The batch in hand is
// finished even when ctx ends, within drainTimeout; past that, finish gives
// up, and the records come again to this worker after a restart or to
// another one, where the dedupe window keeps the pushes already made from
// being made twice. It reports whether the batch was handled.
func (w *Worker) finish(ctx context.Context, batch []*entry) bool {
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// Once ctx ends, the batch has drainTimeout left; a late cancel of a
	// finished batch's context does nothing.
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(drainTimeout, cancel) })
	defer stop()
	msgs := make([]kafka.Message, len(batch))
	for i, e := range batch {
		msgs[i] = e.msg
	}
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		err := w.handle(dctx, msgs)
		if err == nil {
			return true
		}
		w.log.Error("fcm: batch not handled; trying again", slog.String("topic", msgs[0].Topic),
			slog.Int("records", len(msgs)), slog.Any("err", err))
		if ctx.Err() != nil || !sleep(dctx, delay) {
			return false
		}
	}
}

// commitTimeout bounds one commit; a commit past it is tried again.
const commitTimeout = 10 * time.Second

// commitLoop commits the offsets that offs says are ready, until offs is
// closed; then it commits what is left, within drainTimeout.
func (w *Worker) commitLoop(ctx context.Context, r *kafka.Reader, offs *offsets) {
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(drainTimeout, cancel) })
	defer stop()
	for {
		msgs, closed := offs.wait()
		if len(msgs) > 0 {
			cctx, cancelCommit := context.WithTimeout(dctx, commitTimeout)
			err := r.CommitMessages(cctx, msgs...)
			cancelCommit()
			if err != nil {
				w.log.Warn("fcm: commit failed; trying again", slog.String("topic", r.Config().Topic), slog.Any("err", err))
				offs.retry(msgs)
				if !sleep(dctx, 100*time.Millisecond) {
					return
				}
				continue
			}
			w.metrics.observeLag(msgs)
		}
		if closed && len(msgs) == 0 {
			return
		}
	}
}

// notBefore reads a retry record's time from its header, without decoding
// the value.
func notBefore(m kafka.Message) time.Time {
	for _, h := range m.Headers {
		if h.Key == headerNotBefore {
			if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
				return time.UnixMilli(ms)
			}
		}
	}
	return time.Time{}
}

// headerNotBefore carries a retry record's not-before time in Unix ms.
const headerNotBefore = "herald-not-before"

// sleep waits for d or ctx; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// push is one message of a batch: one notification to one token.
type push struct {
	item  int
	token string
}

// handle pushes a batch and makes every outcome durable: retries and dead
// letters are written to Kafka before handle returns nil.
func (w *Worker) handle(ctx context.Context, batch []kafka.Message) error {
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

	pushes, err := w.targets(ctx, items, &deads, trail, now)
	if err != nil {
		return err
	}
	outcomes, err := w.send(ctx, items, pushes, now)
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

// trails collects the fields the worker adds to notifications' trails.
type trails struct {
	prefix string
	adds   []trailAdd
}

type trailAdd struct {
	env    *heraldv1.Envelope
	fields []any
}

func (t *trails) add(env *heraldv1.Envelope, fields ...any) {
	t.adds = append(t.adds, trailAdd{env, fields})
}

func (t *trails) flush(ctx context.Context, rdb redis.UniversalClient) error {
	if len(t.adds) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, a := range t.adds {
			delivery.AddTrace(ctx, p, t.prefix, a.env.GetUserId(), a.env.GetId(), a.fields...)
		}
		return nil
	})
	return err
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
// device is dead-lettered as NO_DEVICE.
func (w *Worker) targets(ctx context.Context, items []item, deads *[]kafka.Message, trail *trails, now time.Time) ([]push, error) {
	var users []string
	for _, it := range items {
		if it.task == nil {
			users = append(users, it.env.GetUserId())
		}
	}
	devices, err := w.deps.Devices.ListMany(ctx, users...)
	if err != nil {
		return nil, err
	}
	var candidates []push
	for i, it := range items {
		if it.task != nil {
			for _, t := range it.task.GetTokens() {
				candidates = append(candidates, push{i, t})
			}
			continue
		}
		ds := devices[it.env.GetUserId()]
		if len(ds) == 0 {
			w.metrics.notifications.WithLabelValues("no_device").Inc()
			w.log.Info("fcm: no registered device; dead-lettered", w.attrs(it.env)...)
			*deads = append(*deads, w.deadLetter(it, CodeNoDevice, "the user has no registered device", 0, 0, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", CodeNoDevice)
			continue
		}
		for _, d := range ds {
			candidates = append(candidates, push{i, d.Token})
		}
	}
	seen := make([]*redis.BoolCmd, len(candidates))
	_, err = w.deps.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for j, c := range candidates {
			seen[j] = p.SIsMember(ctx, w.sentKey(items[c.item].env), tokenHash(c.token))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fcm: dedupe lookup: %w", err)
	}
	var pushes []push
	for j, c := range candidates {
		if seen[j].Val() {
			w.metrics.messages.WithLabelValues("duplicate").Inc()
			continue
		}
		pushes = append(pushes, c)
	}
	return pushes, nil
}

// sentKey is the dedupe set of env's pushes, in the user's slot.
func (w *Worker) sentKey(env *heraldv1.Envelope) string {
	return delivery.FCMSentKey(w.cfg.RedisPrefix, env.GetUserId(), env.GetId())
}

// tokenHash keeps whole tokens out of the dedupe sets.
func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:8])
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
				msgs[k] = message(items[p.item].env, p.token, now, w.cfg.MaxDataBytes)
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

// settle acts on the outcomes: it records the sent ones in the dedupe
// window, removes dead tokens, and builds the retry and dead-letter records.
func (w *Worker) settle(ctx context.Context, items []item, pushes []push, outcomes []outcome, trail *trails, now time.Time) (retries, deads []kafka.Message, err error) {
	type tally struct {
		sent, dead  int
		retryTokens []string
		retryAfter  time.Duration
		retryCode   string
		retryMsg    string
		permCode    string
		permMsg     string
		permTokens  int
		deadCode    string
	}
	tallies := make([]tally, len(items))
	deadTokens := map[string][]string{} // user → tokens
	_, err = w.deps.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for j, o := range outcomes {
			push := pushes[j]
			t := &tallies[push.item]
			env := items[push.item].env
			w.metrics.messages.WithLabelValues(messageLabel(o)).Inc()
			switch o.class {
			case sent:
				t.sent++
				key := w.sentKey(env)
				p.SAdd(ctx, key, tokenHash(push.token))
				p.PExpire(ctx, key, w.cfg.DedupeWindow)
			case deadToken:
				t.dead++
				t.deadCode = o.code
				deadTokens[env.GetUserId()] = append(deadTokens[env.GetUserId()], push.token)
			case retryable:
				t.retryTokens = append(t.retryTokens, push.token)
				t.retryAfter = max(t.retryAfter, o.retryAfter)
				t.retryCode, t.retryMsg = o.code, o.msg
			case permanent:
				t.permTokens++
				t.permCode, t.permMsg = o.code, o.msg
			}
		}
		return nil
	})
	if err != nil {
		// The pushes went out; without the dedupe record a redelivery may
		// push them again, which at-least-once allows. Go on.
		w.log.Warn("fcm: dedupe record failed", slog.Any("err", err))
	}
	for user, tokens := range deadTokens {
		n, err := w.deps.Devices.Unregister(ctx, user, tokens...)
		if err != nil {
			w.log.Warn("fcm: removing dead tokens failed", slog.Any("err", err))
			continue
		}
		w.metrics.tokensRemoved.Add(float64(n))
	}

	for i, t := range tallies {
		it := items[i]
		attempts := int(it.task.GetAttempts())
		if len(t.retryTokens) > 0 {
			attempts++
			first := now
			if ff := it.task.GetFirstFailureAt(); ff != nil {
				first = ff.AsTime()
			}
			if attempts >= w.cfg.MaxAttempts || now.Sub(first) >= w.cfg.MaxRetryAge {
				w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
				w.log.Warn("fcm: retry budget spent; dead-lettered", append(w.attrs(it.env),
					slog.String("code", t.retryCode), slog.Int("attempts", attempts))...)
				deads = append(deads, w.deadLetter(it, t.retryCode, t.retryMsg, attempts, len(t.retryTokens), now))
				trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.retryCode, "fcm_attempts", attempts)
			} else {
				w.metrics.notifications.WithLabelValues("retry_queued").Inc()
				at := now.Add(max(t.retryAfter, w.backoff(attempts)))
				retries = append(retries, w.retryRecord(it, t.retryTokens, attempts, first, at, t.retryCode, now))
				trail.add(it.env, "fcm_retry_ms", at.UnixMilli(), "fcm_code", t.retryCode, "fcm_attempts", attempts)
			}
		}
		if t.permTokens > 0 {
			w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
			w.log.Warn("fcm: permanent failure; dead-lettered", append(w.attrs(it.env), slog.String("code", t.permCode))...)
			deads = append(deads, w.deadLetter(it, t.permCode, t.permMsg, attempts+1, t.permTokens, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.permCode, "fcm_attempts", attempts+1)
		}
		if t.dead > 0 {
			trail.add(it.env, "fcm_tokens_removed", t.dead)
		}
		if t.sent > 0 {
			w.metrics.notifications.WithLabelValues("sent").Inc()
			trail.add(it.env, "fcm_sent_ms", now.UnixMilli(), "fcm_devices", t.sent)
			if w.log.Enabled(ctx, slog.LevelDebug) {
				w.log.Debug("fcm: pushed", append(w.attrs(it.env), slog.Int("devices", t.sent))...)
			}
		}
		if t.sent == 0 && len(t.retryTokens) == 0 && t.permTokens == 0 && t.dead > 0 {
			// Every token the user had is dead: nothing reached them.
			w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
			deads = append(deads, w.deadLetter(it, t.deadCode, "every device token of the user is dead; the tokens were removed", attempts+1, t.dead, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.deadCode)
		}
	}
	return retries, deads, nil
}

// messageLabel is the metric label of one message's outcome.
func messageLabel(o outcome) string {
	switch {
	case o.class == sent:
		return "sent"
	case o.class == deadToken && o.code == "INVALID_ARGUMENT":
		return "invalid_token"
	}
	switch o.code {
	case "UNREGISTERED", "SENDER_ID_MISMATCH", "INVALID_ARGUMENT", "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED":
		return strings.ToLower(o.code)
	}
	return "other"
}

// backoff is the jittered exponential delay before attempt+1.
func (w *Worker) backoff(attempts int) time.Duration {
	d := w.cfg.BackoffBase << min(attempts-1, 30)
	if d <= 0 || d > w.cfg.BackoffMax {
		d = w.cfg.BackoffMax
	}
	// Full jitter, with a floor of half the step so that a retry is never
	// immediate.
	return d/2 + rand.N(d/2+1)
}

// The dead-letter codes of Herald's own, beside FCM's.
const (
	// CodeNoDevice: the user had no registered device.
	CodeNoDevice = "NO_DEVICE"
	// CodeUndecodable: the record could not be decoded; the dead letter is
	// the record as it was, with HeaderErrorCode set.
	CodeUndecodable = "UNDECODABLE"
)

// HeaderErrorCode carries a dead letter's error code, so that tools can
// filter without decoding.
const HeaderErrorCode = "herald-error-code"

func (w *Worker) deadLetter(it item, code, msg string, attempts, devices int, now time.Time) kafka.Message {
	dl := &heraldv1.DeadLetter{
		Envelope:       it.env,
		ErrorCode:      code,
		ErrorMessage:   msg,
		Attempts:       int32(attempts),
		LastFailureAt:  timestamppb.New(now),
		FirstFailureAt: timestamppb.New(now),
		Devices:        int32(devices),
		DeadLetteredAt: timestamppb.New(now),
	}
	if ff := it.task.GetFirstFailureAt(); ff != nil {
		dl.FirstFailureAt = ff
	}
	w.metrics.deadLetters.WithLabelValues(code).Inc()
	return record(it.env, dl, kafka.Header{Key: HeaderErrorCode, Value: []byte(code)})
}

// record is a retry or dead-letter record of env: keyed by user, like the
// offline topic's, with the notification id and extra in its headers.
func record(env *heraldv1.Envelope, value proto.Message, extra kafka.Header) kafka.Message {
	b, _ := proto.Marshal(value)
	return kafka.Message{
		Key:     []byte(env.GetUserId()),
		Value:   b,
		Headers: []kafka.Header{{Key: delivery.HeaderNotificationID, Value: []byte(env.GetId())}, extra},
	}
}

func (w *Worker) retryRecord(it item, tokens []string, attempts int, first, at time.Time, code string, now time.Time) kafka.Message {
	t := &heraldv1.PushTask{
		Envelope:       it.env,
		Tokens:         tokens,
		Attempts:       int32(attempts),
		NotBefore:      timestamppb.New(at),
		FirstFailureAt: timestamppb.New(first),
		LastFailureAt:  timestamppb.New(now),
		LastErrorCode:  code,
	}
	w.metrics.retries.WithLabelValues(code).Inc()
	return record(it.env, t, kafka.Header{Key: headerNotBefore, Value: []byte(strconv.FormatInt(at.UnixMilli(), 10))})
}

// write writes records durably, retrying until it works or ctx ends: the
// batch's offsets are committed only after this.
func (w *Worker) write(ctx context.Context, wr *kafka.Writer, msgs []kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		wctx, cancel := w.cfg.Kafka.WriteContext(ctx)
		err := wr.WriteMessages(wctx, msgs...)
		cancel()
		if err == nil {
			return nil
		}
		w.log.Warn("fcm: writing to kafka failed; retrying", slog.String("topic", wr.Topic),
			slog.Int("records", len(msgs)), slog.Any("err", err))
		if !sleep(ctx, delay) {
			return fmt.Errorf("fcm: write %s: %w", wr.Topic, err)
		}
	}
}

// attrs are the log attributes of a notification.
func (w *Worker) attrs(env *heraldv1.Envelope) []any {
	a := []any{slog.String("notification_id", env.GetId()), slog.String("route", "push"), w.cfg.UserIDs.Attr(env.GetUserId())}
	if c := env.GetCorrelationId(); c != "" {
		a = append(a, slog.String("correlation_id", c))
	}
	return a
}
