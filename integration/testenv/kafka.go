package testenv

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/delivery"
)

// Kafka is an in-process Kafka broker (kfake, which speaks the real wire
// protocol) for one test, on a fixed port and with its data on disk, so that
// it can be stopped and started again without losing what it acknowledged.
type Kafka struct {
	tb      testing.TB
	port    int
	dir     string
	cluster *kfake.Cluster
	// Brokers is the broker address list to give clients.
	Brokers []string
}

// StartKafka starts a one-broker cluster with Herald's three topics, each
// with partitions partitions, and closes it at cleanup.
func StartKafka(tb testing.TB, partitions int) *Kafka {
	tb.Helper()
	k := &Kafka{tb: tb, port: FreePort(tb), dir: tb.TempDir()}
	k.Brokers = []string{"127.0.0.1:" + strconv.Itoa(k.port)}
	k.Start()
	tb.Cleanup(k.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var topics []delivery.TopicSpec
	for _, t := range []string{delivery.DefaultOfflineTopic, delivery.DefaultRetryTopic, delivery.DefaultDeadLetterTopic} {
		topics = append(topics, delivery.TopicSpec{Name: t, Partitions: partitions, ReplicationFactor: 1})
	}
	if err := delivery.EnsureTopics(ctx, k.Brokers, topics...); err != nil {
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
	msgs, err := delivery.ReadTopic(context.Background(), k.Brokers, topic)
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
