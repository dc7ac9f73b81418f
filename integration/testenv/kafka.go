package testenv

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/delivery/queue"
)

// Kafka is an in-process Kafka broker (kfake, which speaks the real wire
// protocol) for one test, on a fixed port and with its data on disk, so that
// it can be stopped and started again without losing what it acknowledged.
type Kafka struct {
	tb         testing.TB
	port       int
	dir        string
	partitions int
	cluster    *kfake.Cluster
	// Brokers is the broker address list to give clients.
	Brokers []string
}

// StartKafka starts a one-broker cluster with Herald's three topics, each
// with partitions partitions, and closes it at cleanup.
func StartKafka(tb testing.TB, partitions int) *Kafka {
	tb.Helper()
	k := &Kafka{tb: tb, port: FreePort(tb), dir: tb.TempDir(), partitions: partitions}
	k.Brokers = []string{"127.0.0.1:" + strconv.Itoa(k.port)}
	k.Start()
	tb.Cleanup(k.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var topics []queue.TopicSpec
	for _, t := range []string{queue.DefaultOfflineTopic, queue.DefaultRetryTopic, queue.DefaultDeadLetterTopic} {
		topics = append(topics, queue.TopicSpec{Name: t, Partitions: partitions, ReplicationFactor: 1})
	}
	if err := queue.EnsureTopics(ctx, k.Brokers, topics...); err != nil {
		tb.Fatalf("create topics: %v", err)
	}
	return k
}

// Start starts the broker (again), reloading the data it had.
func (k *Kafka) Start() {
	k.tb.Helper()
	c, err := kfake.NewCluster(kfake.Ports(k.port), kfake.DataDir(k.dir), kfake.SyncWrites(),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		k.tb.Fatalf("start kfake on port %d: %v", k.port, err)
	}
	k.cluster = c
}

// Stop stops the broker; its clients then see connections refused.
func (k *Kafka) Stop() {
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
}

// Cluster is the running broker, for fault injection (kfake's Control).
func (k *Kafka) Cluster() *kfake.Cluster { return k.cluster }

// ReadAll reads every record of topic, from the start of each partition to
// its end as of the call.
func (k *Kafka) ReadAll(topic string) []kafka.Message {
	k.tb.Helper()
	msgs, err := queue.ReadTopic(context.Background(), k.Brokers, topic)
	if err != nil {
		k.tb.Fatalf("read %s: %v", topic, err)
	}
	return msgs
}

// Decode unmarshals each record's value into a new T.
func Decode[T any, PT interface {
	*T
	proto.Message
}](tb testing.TB, msgs []kafka.Message) []*T {
	tb.Helper()
	out := make([]*T, 0, len(msgs))
	for _, m := range msgs {
		v := PT(new(T))
		if err := proto.Unmarshal(m.Value, v); err != nil {
			tb.Fatalf("decode record at %s/%d/%d: %v", m.Topic, m.Partition, m.Offset, err)
		}
		out = append(out, (*T)(v))
	}
	return out
}

// Span is the offsets [From, To) of a partition.
type Span struct{ From, To int64 }

// Len is how many offsets the span holds.
func (s Span) Len() int64 { return max(s.To-s.From, 0) }

// Uncommitted returns, for each partition of topic, the records that group
// has not committed: from its committed offset (or the partition's first
// record, when it has none) to the partition's end. Partitions with none
// are left out. It asks the broker over the Kafka protocol, as any
// consumer of the group would.
func (k *Kafka) Uncommitted(ctx context.Context, group, topic string) (map[int]Span, error) {
	c := &kafka.Client{Addr: kafka.TCP(k.Brokers...), Timeout: 5 * time.Second}
	var ids []int
	var reqs []kafka.OffsetRequest
	for p := range k.partitions {
		ids = append(ids, p)
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	ends, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	fetched, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err == nil {
		err = fetched.Error
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s's offsets of %s: %w", group, topic, err)
	}
	committed := map[int]int64{}
	for _, p := range fetched.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("fetch %s's offset of %s/%d: %w", group, topic, p.Partition, p.Error)
		}
		committed[p.Partition] = p.CommittedOffset
	}
	out := map[int]Span{}
	for _, p := range ends.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, p.Partition, p.Error)
		}
		from, ok := committed[p.Partition]
		if !ok || from < p.FirstOffset {
			from = p.FirstOffset
		}
		if s := (Span{From: from, To: p.LastOffset}); s.Len() > 0 {
			out[p.Partition] = s
		}
	}
	return out, nil
}
