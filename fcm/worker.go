package fcm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/presence"
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
	Kafka queue.Config
	// The topics: defaults queue.DefaultOfflineTopic, DefaultRetryTopic
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
	// RedisPrefix namespaces the dedupe keys. Default presence.DefaultPrefix.
	RedisPrefix string
	// UserIDs says whether logs show user ids or their hashes (the default).
	UserIDs redact.UserIDs
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

// The defaults New applies to a Config's zero fields, exported so that
// flags can show them; Config's field comments say why each.
const (
	DefaultGroupID        = "herald-fcm"
	DefaultRedisPrefix    = presence.DefaultPrefix
	DefaultBatchSize      = 500
	DefaultBatchWait      = 5 * time.Millisecond
	DefaultMaxAttempts    = 5
	DefaultMaxRetryAge    = time.Hour
	DefaultBackoffBase    = time.Second
	DefaultBackoffMax     = 5 * time.Minute
	DefaultDedupeWindow   = 10 * time.Minute
	DefaultSessionTimeout = 10 * time.Second
	DefaultMaxDataBytes   = 3000
	DefaultConcurrency    = 8
	DefaultQuotaPerMinute = 600000
	DefaultQuotaShare     = 0.95
	DefaultSendTimeout    = 10 * time.Second
)

func (c *Config) setDefaults() error {
	c.OfflineTopic = cmp.Or(c.OfflineTopic, queue.DefaultOfflineTopic)
	c.RetryTopic = cmp.Or(c.RetryTopic, queue.DefaultRetryTopic)
	c.DeadLetterTopic = cmp.Or(c.DeadLetterTopic, queue.DefaultDeadLetterTopic)
	c.GroupID = cmp.Or(c.GroupID, DefaultGroupID)
	c.RedisPrefix = cmp.Or(c.RedisPrefix, DefaultRedisPrefix)
	c.BatchWait = cmp.Or(c.BatchWait, DefaultBatchWait)
	c.MaxRetryAge = cmp.Or(c.MaxRetryAge, DefaultMaxRetryAge)
	c.BackoffBase = cmp.Or(c.BackoffBase, DefaultBackoffBase)
	c.BackoffMax = cmp.Or(c.BackoffMax, DefaultBackoffMax)
	c.DedupeWindow = cmp.Or(c.DedupeWindow, DefaultDedupeWindow)
	c.SessionTimeout = cmp.Or(c.SessionTimeout, DefaultSessionTimeout)
	c.SendTimeout = cmp.Or(c.SendTimeout, DefaultSendTimeout)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.MaxDataBytes = cmp.Or(c.MaxDataBytes, DefaultMaxDataBytes)
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.QuotaPerMinute = cmp.Or(c.QuotaPerMinute, DefaultQuotaPerMinute)
	c.QuotaShare = cmp.Or(c.QuotaShare, DefaultQuotaShare)
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
	Devices *devices.Registry
	// Redis holds the dedupe window; the same Redis as Devices.
	Redis redis.UniversalClient
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the worker's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TracerProvider, when set, traces the FCM sends of notifications that
	// carry a trace context ("herald.fcm.send", with the outcome). Nil, the
	// default, traces nothing.
	TracerProvider trace.TracerProvider
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
	// tracer is nil when tracing is off.
	tracer trace.Tracer
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
	retryW, err := queue.NewWriter(cfg.Kafka, cfg.RetryTopic)
	if err != nil {
		return nil, err
	}
	deadW, err := queue.NewWriter(cfg.Kafka, cfg.DeadLetterTopic)
	if err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, deps: deps, log: deps.Logger, metrics: m, retryW: retryW, deadW: deadW, chunk: maxPerCall,
		calls: make(chan struct{}, 2*cfg.Concurrency)}
	if deps.TracerProvider != nil {
		w.tracer = deps.TracerProvider.Tracer(delivery.TracerName)
	}
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

// Topics are the worker's topics, for queue.EnsureTopics.
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

// attrs are the log attributes of a notification.
func (w *Worker) attrs(env *heraldv1.Envelope) []any {
	a := []any{slog.String("notification_id", env.GetId()), slog.String("route", "push"), w.cfg.UserIDs.Attr(env.GetUserId())}
	if c := env.GetCorrelationId(); c != "" {
		a = append(a, slog.String("correlation_id", c))
	}
	return a
}
