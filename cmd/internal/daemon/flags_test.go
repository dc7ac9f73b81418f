package daemon_test

import (
	"flag"
	"testing"

	"github.com/herald-push/herald/cmd/internal/daemon"
)

// TestSubsetFlagsMatchCommon: Redis.Register and Kafka.RegisterNamed define
// their flags with the names, defaults and usage of Common.Register and
// Kafka.Register, and the values land in their structs.
func TestSubsetFlagsMatchCommon(t *testing.T) {
	full := flag.NewFlagSet("full", flag.ContinueOnError)
	var c daemon.Common
	c.Register(full, "")
	var k daemon.Kafka
	k.Register(full)

	sub := flag.NewFlagSet("sub", flag.ContinueOnError)
	var r daemon.Redis
	r.Register(sub)
	var sk daemon.Kafka
	sk.RegisterNamed(sub, "kafka-brokers", "kafka-dead-letter-topic", "kafka-create-topics")
	n := 0
	sub.VisitAll(func(f *flag.Flag) {
		n++
		want := full.Lookup(f.Name)
		if want == nil {
			t.Errorf("-%s: not a flag of Common or Kafka", f.Name)
			return
		}
		if f.DefValue != want.DefValue || f.Usage != want.Usage {
			t.Errorf("-%s: default %q, usage %q; Common/Kafka's: %q, %q", f.Name, f.DefValue, f.Usage, want.DefValue, want.Usage)
		}
	})
	if n != 6 {
		t.Errorf("%d flags defined, want 6", n)
	}
	if err := sub.Parse([]string{"-redis-addr", "r:1", "-redis-prefix", "p:", "-kafka-brokers", "b:1,b:2",
		"-kafka-dead-letter-topic", "dl", "-kafka-create-topics=false"}); err != nil {
		t.Fatal(err)
	}
	if r.Addr != "r:1" || r.Prefix != "p:" || r.Password != "" {
		t.Errorf("Redis = %+v", r)
	}
	if sk.Brokers != "b:1,b:2" || sk.DeadLetterTopic != "dl" || sk.CreateTopics || sk.OfflineTopic == "" {
		t.Errorf("Kafka = %+v", sk)
	}
}

// TestRegisterNamedUnknown: a name Kafka.Register does not define panics.
func TestRegisterNamedUnknown(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	var k daemon.Kafka
	k.RegisterNamed(flag.NewFlagSet("x", flag.ContinueOnError), "kafka-nope")
}
