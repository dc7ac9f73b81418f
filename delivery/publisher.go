package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Route is where the publisher sent a notification.
type Route string

const (
	// RouteOnline: published, and at least one edge subscriber took it.
	RouteOnline Route = "online"
	// RouteOffline: the user had no live lease; nothing was published.
	RouteOffline Route = "offline"
	// RouteStale: presence said online, but the publish reached no edge.
	// Callers treat it as offline.
	RouteStale Route = "stale"
)

// Result is the outcome of one Publish or Broadcast.
type Result struct {
	ID          string // the notification id (the first call's, on a duplicate)
	Route       Route
	EventID     string // the position in the stream's history
	Subscribers int    // edge subscribers that took the publish
	Duplicate   bool   // the idempotency key had been seen; nothing was published
	// Queued: the user was not reached online, and the offline queue has
	// acknowledged the notification.
	Queued bool
	// AcceptedAt is when the (first) call was accepted.
	AcceptedAt time.Time
	// AckBy is the ack deadline of an ack-or-push notification (the first
	// call's, on a duplicate), and zero for a fire-and-forget one: the
	// delivery mode that was applied.
	AckBy time.Time
}

// The defaults that the zero values of PublisherConfig stand for.
const (
	DefaultIdempotencyWindow = 10 * time.Minute
	DefaultPendingTimeout    = 30 * time.Second
	// DefaultTraceTTL is how long a notification's trail is kept by default.
	DefaultTraceTTL = 15 * time.Minute
	// DefaultTraceRate is how many notifications a second a publisher
	// traces by default.
	DefaultTraceRate   = 100
	DefaultMaxPipeline = 128
)

// PublisherConfig configures a Publisher. The zero value of each field
// means the documented default.
type PublisherConfig struct {
	// IdempotencyWindow is how long an idempotency key is remembered. Default
	// 10 minutes: long enough to cover a caller's retries and a router restart,
	// short enough that the keys of a busy caller do not fill Redis.
	IdempotencyWindow time.Duration
	// History bounds each stream's history; see HistoryConfig.
	History HistoryConfig
	// Offline takes the notifications of users who are not reached online.
	// Nil means there is no offline path: such notifications are only
	// recorded in history.
	Offline OfflineQueue
	// PendingTimeout is how long an idempotency key stays claimed while its
	// notification is being written to the offline queue. A retry within it
	// gets ErrInFlight; after it, a retry claims the key and queues the
	// notification the first call recorded (idemrecord.go). Default 30s,
	// above the offline queue's write timeout.
	PendingTimeout time.Duration
	// TraceTTL is how long a notification's trail (see TraceKey and
	// delivery/trail) is kept.
	// Default 15 minutes; negative keeps none. The trail costs no extra
	// round trip, about 2 µs of Redis CPU, and about 220 bytes of Redis
	// memory per traced notification in the window; TraceRate bounds it.
	TraceTTL time.Duration
	// TraceRate is the most notifications a second, per publisher, whose
	// trail is kept: the first TraceRate of each second are traced, the
	// rest are not. Default 100, which bounds the trails to about 20 MB
	// per router with the default TraceTTL whatever the rate; negative
	// traces every notification (at 5,000 a second, about 1 GB).
	TraceRate int
	// Receipts keeps the delivery receipts of ack-or-push notifications
	// (*receipts.Receipts, of delivery/receipts). Nil refuses them with
	// ErrNoReceipts. It needs Offline, for the fallback.
	Receipts Receipts
	// MaxPipeline is the most concurrent Publish calls whose scripts go to
	// Redis in one pipeline. Default 128: enough to carry a busy router's
	// calls in a few round trips, few enough that one pipeline does not
	// hold Redis for long. 1 sends every call in a round trip of its own.
	MaxPipeline int
	// Now is the clock of the times the publisher writes in trails. Nil
	// means time.Now. (Event ids and acceptance times in Redis come from
	// Redis' own clock, in the scripts.)
	Now func() time.Time
	// TracerProvider, when set, traces each notification: a span for its
	// notify script ("herald.publish") and one for its Kafka write
	// ("herald.kafka.write"), whose contexts the envelope carries to the
	// edges and to the FCM worker, and the trace id in its trail. Nil, the
	// default, traces nothing, at no cost.
	TracerProvider trace.TracerProvider
}

// ErrNoReceipts is returned for an ack-or-push notification by a publisher
// without receipts (or without an offline queue to fall back to).
var ErrNoReceipts = errors.New("delivery: ack-or-push needs delivery receipts and an offline path, and this router has none")

// OfflineQueue durably queues a notification for the offline path.
// *queue.Kafka (delivery/queue) implements it.
type OfflineQueue interface {
	Enqueue(ctx context.Context, env *heraldv1.Envelope) error
}

// Receipts is what a Publisher needs of the delivery receipts of
// ack-or-push notifications: *receipts.Receipts (delivery/receipts)
// implements it.
type Receipts interface {
	// Keys are user's receipt hashes, which the notify script writes the
	// receipt of an online notification to.
	Keys(user string) []string
	// Schedule puts the deadlines of ack-or-push envs in the deadline
	// index, before the notify script creates their receipts; errs[i] is
	// envs[i]'s error.
	Schedule(ctx context.Context, envs []*heraldv1.Envelope) (errs []error)
	// Confirm puts back in the index the deadlines of receipts the notify
	// script has just created close to their deadline, in case a sweeper
	// dropped them in between. Best effort.
	Confirm(ctx context.Context, envs []*heraldv1.Envelope) error
}

// ErrInFlight is returned for an idempotency key whose first call is still
// being routed (or died while routing it; see PendingTimeout).
var ErrInFlight = errors.New("delivery: a call with this idempotency key is still being routed")

// OfflineError is an error of the offline queue: the notification was not
// queued, and the caller may retry.
type OfflineError struct{ Err error }

func (e *OfflineError) Error() string { return "delivery: offline queue: " + e.Err.Error() }
func (e *OfflineError) Unwrap() error { return e.Err }

// Publisher records notifications in their stream's history and publishes
// them to the edges.
type Publisher struct {
	rdb      redis.Cmdable
	presence *presence.Registry
	cfg      PublisherConfig
	// scripts are the scripts for rdb: with SPUBLISH on a Redis Cluster,
	// PUBLISH otherwise.
	scripts scripts
	pipe    *autoPipeline
	traces  traceBudget
	sharded bool         // rdb is a Redis Cluster client
	tracer  trace.Tracer // nil: tracing off
	// configArgs are the notify script's first scriptConfigArgs arguments,
	// the publisher's settings, boxed once: each call shares them.
	configArgs []any
}

// NewPublisher returns a Publisher that looks presence up in reg and publishes
// through rdb, which must reach the same Redis.
func NewPublisher(rdb redis.Cmdable, reg *presence.Registry, cfg PublisherConfig) (*Publisher, error) {
	if rdb == nil || reg == nil {
		return nil, errors.New("delivery: publisher needs a redis client and a presence registry")
	}
	if cfg.IdempotencyWindow == 0 {
		cfg.IdempotencyWindow = DefaultIdempotencyWindow
	}
	if cfg.PendingTimeout == 0 {
		cfg.PendingTimeout = DefaultPendingTimeout
	}
	if cfg.TraceTTL == 0 {
		cfg.TraceTTL = DefaultTraceTTL
	}
	if cfg.MaxPipeline == 0 {
		cfg.MaxPipeline = DefaultMaxPipeline
	}
	if cfg.TraceRate == 0 {
		cfg.TraceRate = DefaultTraceRate
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxPipeline < 0 {
		return nil, fmt.Errorf("delivery: max pipeline %d is negative", cfg.MaxPipeline)
	}
	if cfg.IdempotencyWindow < time.Millisecond || cfg.PendingTimeout < time.Millisecond {
		return nil, fmt.Errorf("delivery: idempotency window %v or pending timeout %v is too short",
			cfg.IdempotencyWindow, cfg.PendingTimeout)
	}
	var err error
	if cfg.History, err = cfg.History.WithDefaults(); err != nil {
		return nil, err
	}
	p := &Publisher{rdb: rdb, presence: reg, cfg: cfg, scripts: newScripts(rdb), sharded: Sharded(rdb)}
	p.pipe = &autoPipeline{max: cfg.MaxPipeline, run: p.runScripts}
	var pending int64
	if cfg.Offline != nil {
		pending = cfg.PendingTimeout.Milliseconds()
	}
	p.configArgs = append(append([]any{cfg.IdempotencyWindow.Milliseconds()}, cfg.History.args()...), pending)
	if len(p.configArgs) != scriptConfigArgs {
		return nil, fmt.Errorf("delivery: %d script settings, want %d", len(p.configArgs), scriptConfigArgs)
	}
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer(TracerName)
	}
	return p, nil
}

// Publish routes env to its user. In one Redis round trip it records env in
// the user's history and, when presence says the user is online, publishes
// it on the user's channel. When no edge took it and there is an offline
// queue, it then queues env there and returns once the queue has
// acknowledged it; an error of the queue is an *OfflineError. With a
// non-empty idempotencyKey, a key seen within the window returns the first
// call's result with Duplicate set, and records and publishes nothing.
//
// Concurrent calls share round trips: while a call's script is on its way to
// Redis, the calls that arrive wait and go together in the next pipeline
// (see PublisherConfig.MaxPipeline). A call alone goes at once.
func (p *Publisher) Publish(ctx context.Context, env *heraldv1.Envelope, idempotencyKey string) (Result, error) {
	sctx, span := p.startSpan(ctx, "herald.publish", env)
	c, r, queue, err := p.publish(sctx, env, idempotencyKey)
	endSpan(span, r, err)
	if !queue {
		return r, err
	}
	env.EventId = r.EventID
	kctx, span := p.startSpan(ctx, "herald.kafka.write", env)
	q := &queued{call: c, res: r, err: p.cfg.Offline.Enqueue(kctx, env)}
	endSpan(span, Result{}, q.err)
	p.settle(ctx, []*queued{q})
	return q.res, q.err
}

// publish runs env's notify script, as Publish describes; queue says that
// env reached no edge and goes to the offline queue.
func (p *Publisher) publish(ctx context.Context, env *heraldv1.Envelope, idempotencyKey string) (c *notifyCall, r Result, queue bool, err error) {
	c, err = p.prepare(ctx, env, idempotencyKey)
	if err != nil {
		return nil, Result{}, false, err
	}
	if env.GetAckBy() != nil {
		if err := p.cfg.Receipts.Schedule(ctx, []*heraldv1.Envelope{env})[0]; err != nil {
			return nil, Result{}, false, fmt.Errorf("delivery: publish: %w", err)
		}
	}
	p.pipe.do(c)
	r, queue, err = p.outcome(c)
	if receiptCreated(env, r, err) {
		_ = p.cfg.Receipts.Confirm(ctx, []*heraldv1.Envelope{env}) // best effort: see Confirm
	}
	return c, r, queue, err
}

// notifyCall is one notification on its way through the notify script.
type notifyCall struct {
	ctx    context.Context
	env    *heraldv1.Envelope
	hasKey bool
	idem   string // the idempotency key's name, with hasKey
	traced bool   // the script starts the notification's trail
	keys   []string
	args   []any
	record string // the idempotency record's "id|accepted ms|ack deadline ms"
	// reply and err are the script's.
	reply []string
	err   error
	// wake is done when the auto-pipeliner has run the call, or has made
	// it lead the pipeline batch: a queued call waits once, on a wait
	// group allocated with the call rather than a channel of its own.
	wake  sync.WaitGroup
	batch []*notifyCall
	// keyBuf and argBuf hold keys and args, allocated with the call.
	keyBuf [8]string
	argBuf [scriptConfigArgs + 10]any
}

// prepare builds env's notify script call; it does no I/O.
//
// It sets env.Traced when the notification's trail is kept, so that the
// edges and the FCM worker add to the trail only then.
func (p *Publisher) prepare(ctx context.Context, env *heraldv1.Envelope, idempotencyKey string) (*notifyCall, error) {
	traceTTL := max(p.cfg.TraceTTL.Milliseconds(), 0)
	if traceTTL > 0 && !p.traces.take(p.cfg.Now(), p.cfg.TraceRate) {
		traceTTL = 0
	}
	env.Traced = traceTTL > 0
	payload, err := Marshal(env)
	if err != nil {
		return nil, err
	}
	user := env.GetUserId()
	c := &notifyCall{ctx: ctx, env: env}
	names := userNotifyNames(p.presence.Prefix(), user)
	keys := append(c.keyBuf[:0], names.presence, names.log, names.last)
	hasKey, idem := any("0"), "" // boxed constants: no allocation
	if idempotencyKey != "" {
		idem = idempotencyKeyName(p.presence.Prefix(), user, idempotencyKey)
		keys = append(keys, idem)
		hasKey = any("1")
	}
	if traceTTL > 0 {
		keys = append(keys, TraceKey(p.presence.Prefix(), user, env.GetId()))
	}
	var ackBy int64
	if env.GetAckBy() != nil {
		if p.cfg.Receipts == nil || p.cfg.Offline == nil {
			return nil, ErrNoReceipts
		}
		if ackBy = env.GetAckBy().AsTime().UnixMilli(); ackBy <= 0 { // "0": none, to the script (its keys uncounted)
			return nil, fmt.Errorf("delivery: an ack deadline at or before 1970 (%d ms)", ackBy)
		}
		keys = append(keys, p.cfg.Receipts.Keys(user)...)
	}
	record := idemRecord(env.GetId(), env.GetAcceptedAt().AsTime().UnixMilli(), ackBy)
	args := append(c.argBuf[:0], p.configArgs...)
	args = append(args, names.channel, payload, "0") // "0": nothing more (see notifyLua)
	if idempotencyKey != "" || traceTTL > 0 || ackBy != 0 {
		args = append(args[:len(args)-1], "1", record, hasKey, traceTTL, user, env.GetCorrelationId(), ackBy, p.traceID(ctx))
	}
	c.hasKey, c.idem, c.traced = idempotencyKey != "", idem, traceTTL > 0
	c.keys, c.args, c.record = keys, args, record
	return c, nil
}

// idemRecord is an idempotency record's "id|accepted ms|ack deadline ms",
// built in one allocation.
func idemRecord(id string, acceptedMs, ackByMs int64) string {
	b := make([]byte, 0, 80)
	b = append(b, id...)
	b = append(b, '|')
	b = strconv.AppendInt(b, acceptedMs, 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, ackByMs, 10)
	return string(b)
}

// outcome decodes a call's reply. queue says that the notification reached
// no edge and must still go to the offline queue.
func (p *Publisher) outcome(c *notifyCall) (r Result, queue bool, err error) {
	if c.err != nil {
		return Result{}, false, fmt.Errorf("delivery: publish: %w", c.err)
	}
	res := c.reply
	if len(res) == 2 && res[0] == "dup" {
		if strings.HasPrefix(res[1], "pending|") {
			return Result{}, false, ErrInFlight
		}
		rec := res[1]
		if rest, ok := strings.CutPrefix(rec, refusedPrefix); ok {
			if p.cfg.Offline != nil {
				return requeue(c, rest)
			}
			// A router without the offline path (of the same Redis) answers
			// with what the notify script did, as for any duplicate.
			rec = rest
		}
		r, err := parseRecord(rec)
		return r, false, err
	}
	r, err = p.result(c.env, res)
	if err != nil || r.Route == RouteOnline || p.cfg.Offline == nil {
		return r, false, err
	}
	return r, true, nil
}

// queued is a notification handed to the offline queue, with the queue's
// answer.
type queued struct {
	call *notifyCall
	res  Result
	err  error // the queue's
}

// settle records, in one pipeline, what the offline queue did with
// notifications that reached no edge: it replaces each one's pending
// idempotency record with the final one or, when the queue failed, with a
// refused one (idemrecord.go), so that the caller's retry queues the same
// event again. It sets each one's Queued, or its error to an *OfflineError.
func (p *Publisher) settle(ctx context.Context, qs []*queued) {
	// The records are written even when the caller has gone: the outcome
	// must be remembered for its retry, and for the trail.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	// A failure here leaves a pending record to time out: the
	// notification is queued, and a retry after the timeout would queue it
	// once more, which at-least-once delivery allows.
	_, _ = p.rdb.Pipelined(bg, func(pl redis.Pipeliner) error {
		for _, q := range qs {
			c, env := q.call, q.call.env
			trace := TraceKey(p.presence.Prefix(), env.GetUserId(), env.GetId())
			if q.err != nil {
				if c.hasKey {
					p.scripts.abandon.Eval(bg, pl, []string{c.idem}, "|"+c.record, refusedRecord(q.res, c.record),
						p.cfg.IdempotencyWindow.Milliseconds())
				}
				if c.traced {
					pl.HSet(bg, trace, "queue_error", q.err.Error())
				}
				q.res, q.err = Result{}, &OfflineError{Err: q.err}
				continue
			}
			q.res.Queued = true
			if c.hasKey {
				r := q.res
				final := string(r.Route) + "|" + strconv.Itoa(r.Subscribers) + "|" + r.EventID + "|" + c.record + "|queued"
				pl.Set(bg, c.idem, final, p.cfg.IdempotencyWindow)
			}
			if c.traced {
				pl.HSet(bg, trace, "queued_ms", p.cfg.Now().UnixMilli())
			}
		}
		return nil
	})
}

// Broadcast records env in its topic's history and publishes it to every
// edge subscribed to the topic, in one round trip.
func (p *Publisher) Broadcast(ctx context.Context, env *heraldv1.Envelope) (Result, error) {
	payload, err := Marshal(env)
	if err != nil {
		return Result{}, err
	}
	s := TopicStream(env.GetTopic())
	args := append([]any{Channel(p.presence.Prefix(), s), payload}, p.cfg.History.args()...)
	res, err := p.scripts.broadcast.Run(ctx, p.rdb, HistoryKeys(p.presence.Prefix(), s), args...).StringSlice()
	if err != nil {
		return Result{}, fmt.Errorf("delivery: broadcast: %w", err)
	}
	return p.result(env, res)
}

// result decodes a script's {route, subscribers, event id} reply.
func (p *Publisher) result(env *heraldv1.Envelope, res []string) (Result, error) {
	if len(res) != 3 {
		return Result{}, fmt.Errorf("delivery: unexpected reply %q", res)
	}
	subs, err := strconv.Atoi(res[1])
	if err != nil {
		return Result{}, fmt.Errorf("delivery: bad subscriber count %q", res[1])
	}
	r := Result{
		ID:          env.GetId(),
		Route:       Route(res[0]),
		EventID:     res[2],
		Subscribers: subs,
		AcceptedAt:  env.GetAcceptedAt().AsTime(),
	}
	if env.GetAckBy() != nil {
		r.AckBy = env.GetAckBy().AsTime()
	}
	return r, nil
}

// receiptCreated reports whether the notify script created env's receipt:
// env is ack-or-push, and was published to an edge, not as a duplicate.
func receiptCreated(env *heraldv1.Envelope, r Result, err error) bool {
	return env.GetAckBy() != nil && err == nil && r.Route == RouteOnline && !r.Duplicate
}
