package daemon

import (
	"context"
	"flag"
	"strings"
	"time"

	"github.com/herald-push/herald/delivery/queue"
)

// Kafka holds the flags of the binaries that use Kafka.
type Kafka struct {
	Brokers         string
	OfflineTopic    string
	RetryTopic      string
	DeadLetterTopic string
	CreateTopics    bool
	Partitions      int
	Replication     int
	BatchTimeout    time.Duration
}

// Register defines the Kafka flags on fs.
func (k *Kafka) Register(fs *flag.FlagSet) {
	fs.StringVar(&k.Brokers, "kafka-brokers", "127.0.0.1:9092", "Kafka seed brokers, comma-separated")
	fs.StringVar(&k.OfflineTopic, "kafka-offline-topic", queue.DefaultOfflineTopic, "topic of offline users' notifications")
	fs.StringVar(&k.RetryTopic, "kafka-retry-topic", queue.DefaultRetryTopic, "topic of FCM pushes to retry")
	fs.StringVar(&k.DeadLetterTopic, "kafka-dead-letter-topic", queue.DefaultDeadLetterTopic, "topic of pushes that failed for good")
	fs.BoolVar(&k.CreateTopics, "kafka-create-topics", true, "create missing topics at start (needs the CreateTopics permission)")
	fs.IntVar(&k.Partitions, "kafka-partitions", 12, "partitions of topics created at start: the most workers that can share the load")
	fs.IntVar(&k.Replication, "kafka-replication", 3, "replication factor of topics created at start")
	fs.DurationVar(&k.BatchTimeout, "kafka-batch-timeout", queue.DefaultBatchTimeout, "how long a writer waits to fill a batch")
}

// RegisterNamed defines on fs only the Kafka flags named (without their
// leading -), with Register's names, defaults and usage, for commands that
// need a few of them (heraldctl's). Like Register, it sets every field of k
// to its default. It panics on a name Register does not define: a
// programming error.
func (k *Kafka) RegisterNamed(fs *flag.FlagSet, names ...string) {
	all := flag.NewFlagSet("kafka", flag.ContinueOnError)
	k.Register(all)
	for _, name := range names {
		f := all.Lookup(name)
		if f == nil {
			panic("daemon: no Kafka flag -" + name)
		}
		fs.Var(f.Value, f.Name, f.Usage)
	}
}

// BrokerList is the brokers as a list.
func (k *Kafka) BrokerList() []string {
	var out []string
	for _, b := range strings.Split(k.Brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// Config is the writers' configuration.
func (k *Kafka) Config() queue.Config {
	return queue.Config{Brokers: k.BrokerList(), BatchTimeout: k.BatchTimeout}
}

// Ensure creates the missing topics, when -kafka-create-topics says so.
func (k *Kafka) Ensure(ctx context.Context) error {
	if !k.CreateTopics {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var specs []queue.TopicSpec
	for _, t := range []string{k.OfflineTopic, k.RetryTopic, k.DeadLetterTopic} {
		specs = append(specs, queue.TopicSpec{Name: t, Partitions: k.Partitions, ReplicationFactor: k.Replication})
	}
	return queue.EnsureTopics(ctx, k.BrokerList(), specs...)
}

// Ready is a readiness check that asks a broker for metadata.
func (k *Kafka) Ready(ctx context.Context) error { return queue.Ready(ctx, k.BrokerList()) }

// AllReady combines readiness checks: ready when each is.
func AllReady(checks ...func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}
