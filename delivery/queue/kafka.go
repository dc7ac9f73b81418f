// Package queue is the Kafka side of the offline path: the writer that the
// router's offline queue and the FCM worker's retries use, the queue
// itself, the records it writes, and the admin calls that create, probe and
// read its topics.
package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The Kafka topics of the offline path, by default.
const (
	// DefaultOfflineTopic carries the notifications of users who are not
	// connected, keyed by user, from the routers to the FCM workers.
	DefaultOfflineTopic = "herald.offline"
	// DefaultRetryTopic carries pushes to try again (heraldv1.PushTask).
	DefaultRetryTopic = "herald.fcm.retry"
	// DefaultDeadLetterTopic carries pushes that failed for good
	// (heraldv1.DeadLetter), for on-call engineers to inspect and replay.
	DefaultDeadLetterTopic = "herald.fcm.failed"
)

// The defaults that the zero values of Config stand for (CallTimeout's is
// computed from MaxAttempts and WriteTimeout).
const (
	DefaultBatchTimeout = 2 * time.Millisecond
	DefaultWriteTimeout = 5 * time.Second
	DefaultMaxAttempts  = 3
)

// Config says how to reach Kafka. The zero value of each field but
// Brokers means the documented default.
type Config struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string
	// BatchTimeout is how long a writer waits to fill a batch. Default 2ms:
	// concurrent writes share one produce request, yet a lone write is not
	// held for kafka-go's default of a full second.
	BatchTimeout time.Duration
	// WriteTimeout bounds one produce request on the network. Default 5s.
	WriteTimeout time.Duration
	// MaxAttempts is how often a writer tries a batch before it reports the
	// error. Default 3: a Notify waits for it, and its caller retries anyway.
	MaxAttempts int
	// CallTimeout bounds one write call, whatever its caller's context: the
	// metadata lookup, which kafka-go makes under the caller's context
	// alone, the batch's wait and every attempt. Default MaxAttempts ×
	// WriteTimeout + 5s (20s), so that the writer's own attempts run to
	// their end.
	CallTimeout time.Duration
}

func (c *Config) setDefaults() error {
	if len(c.Brokers) == 0 {
		return errors.New("queue: kafka needs at least one broker address")
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = DefaultBatchTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = c.callTimeout()
	}
	if c.BatchTimeout < 0 || c.WriteTimeout <= 0 || c.MaxAttempts < 1 || c.CallTimeout <= 0 {
		return fmt.Errorf("queue: invalid kafka config %+v", *c)
	}
	return nil
}

// WriteContext is ctx bounded by CallTimeout, for one write call of a
// writer of c.
func (c Config) WriteContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.callTimeout())
}

// callTimeout is CallTimeout, or its default.
func (c Config) callTimeout() time.Duration {
	if c.CallTimeout > 0 {
		return c.CallTimeout
	}
	attempts, write := c.MaxAttempts, c.WriteTimeout
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	if write <= 0 {
		write = DefaultWriteTimeout
	}
	return time.Duration(attempts)*write + 5*time.Second
}

// NewWriter returns a writer to topic that waits for every in-sync replica to
// acknowledge a write (acks=all) and partitions by key with murmur2, as
// Kafka's own Java clients do, so that one user's records stay in order in
// one partition whichever client wrote them.
func NewWriter(cfg Config, topic string) (*kafka.Writer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &kafka.Writer{
		Addr:            kafka.TCP(cfg.Brokers...),
		Topic:           topic,
		Balancer:        &kafka.Murmur2Balancer{},
		RequiredAcks:    kafka.RequireAll,
		BatchTimeout:    cfg.BatchTimeout,
		BatchSize:       1000,
		WriteTimeout:    cfg.WriteTimeout,
		ReadTimeout:     cfg.WriteTimeout,
		MaxAttempts:     cfg.MaxAttempts,
		WriteBackoffMin: 20 * time.Millisecond,
		WriteBackoffMax: 200 * time.Millisecond,
	}, nil
}

// TopicSpec is a topic to create.
type TopicSpec struct {
	Name              string
	Partitions        int
	ReplicationFactor int
}

// EnsureTopics creates the topics that do not exist yet; existing ones are
// left as they are.
func EnsureTopics(ctx context.Context, brokers []string, topics ...TopicSpec) error {
	if len(brokers) == 0 {
		return errors.New("queue: kafka needs at least one broker address")
	}
	req := &kafka.CreateTopicsRequest{Addr: kafka.TCP(brokers...)}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{
			Topic:             t.Name,
			NumPartitions:     t.Partitions,
			ReplicationFactor: t.ReplicationFactor,
		})
	}
	resp, err := (&kafka.Client{Timeout: 10 * time.Second}).CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("queue: create topics: %w", err)
	}
	var errs []error
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("topic %s: %w", name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("queue: create topics: %w", errors.Join(errs...))
	}
	return nil
}

// Ready reports whether one of the brokers answers a metadata request.
func Ready(ctx context.Context, brokers []string) error {
	var errs []error
	for _, b := range brokers {
		_, err := (&kafka.Client{Addr: kafka.TCP(b), Timeout: 2 * time.Second}).Metadata(ctx, &kafka.MetadataRequest{})
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("kafka: no broker answers: %w", errors.Join(errs...))
}

// Kafka is the router's offline route, its delivery.OfflineQueue: it
// writes each notification to the offline topic, keyed by user, and returns
// once Kafka has acknowledged it.
type Kafka struct {
	cfg Config
	w   *kafka.Writer
}

var _ delivery.OfflineQueue = (*Kafka)(nil)

// NewKafka returns a queue that writes to topic.
func NewKafka(cfg Config, topic string) (*Kafka, error) {
	w, err := NewWriter(cfg, topic)
	if err != nil {
		return nil, err
	}
	return &Kafka{cfg: cfg, w: w}, nil
}

// Enqueue writes env and waits for its acknowledgement, within the
// config's CallTimeout.
func (q *Kafka) Enqueue(ctx context.Context, env *heraldv1.Envelope) error {
	msg, err := EnvelopeMessage(env)
	if err != nil {
		return err
	}
	ctx, cancel := q.cfg.WriteContext(ctx)
	defer cancel()
	return q.w.WriteMessages(ctx, msg)
}

// Close flushes and closes the writer.
func (q *Kafka) Close() error { return q.w.Close() }

// HeaderNotificationID is the Kafka header that carries the notification id
// on every record of the offline path, so that tools can find a notification
// without decoding the value.
const HeaderNotificationID = "herald-notification-id"

// EnvelopeMessage is env as a record of the offline topic: keyed by user,
// the envelope as the value.
func EnvelopeMessage(env *heraldv1.Envelope) (kafka.Message, error) {
	value, err := delivery.Marshal(env)
	if err != nil {
		return kafka.Message{}, err
	}
	return kafka.Message{
		Key:     []byte(env.GetUserId()),
		Value:   value,
		Headers: AppendTraceHeaders([]kafka.Header{{Key: HeaderNotificationID, Value: []byte(env.GetId())}}, env),
	}, nil
}

// AppendTraceHeaders appends env's W3C trace context, if it carries one, to
// a record's headers as "traceparent" and "tracestate", so that tools and
// other consumers can follow the trace without decoding the value. (Herald's
// worker reads it from the envelope, which retries and dead letters carry
// too.)
func AppendTraceHeaders(hs []kafka.Header, env *heraldv1.Envelope) []kafka.Header {
	if tp := env.GetTraceparent(); tp != "" {
		hs = append(hs, kafka.Header{Key: delivery.TraceparentKey, Value: []byte(tp)})
		if ts := env.GetTracestate(); ts != "" {
			hs = append(hs, kafka.Header{Key: delivery.TracestateKey, Value: []byte(ts)})
		}
	}
	return hs
}

// ReadTopic reads every record of topic up to each partition's end as of the
// call. ctx's deadline bounds it all, the connections' reads included.
func ReadTopic(ctx context.Context, brokers []string, topic string) ([]kafka.Message, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, err
	}
	setDeadline(ctx, conn)
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, err
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return nil, err
		}
		setDeadline(ctx, pc)
		first, last, err := pc.ReadOffsets()
		pc.Close()
		if err != nil {
			return nil, err
		}
		if last <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return nil, err
		}
		for off := first; off < last; {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, err
			}
			out = append(out, m)
			off = m.Offset + 1
		}
		r.Close()
	}
	return out, nil
}

// setDeadline gives conn ctx's deadline: a kafka.Conn's calls take no
// context.
func setDeadline(ctx context.Context, conn *kafka.Conn) {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
}
