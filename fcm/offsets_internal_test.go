package fcm

import (
	"testing"

	"github.com/segmentio/kafka-go"
)

func TestOffsetsCommitOnlyDonePrefix(t *testing.T) {
	o := newOffsets()
	var es []*entry
	for i := range 5 {
		es = append(es, o.track(kafka.Message{Partition: 1, Offset: int64(10 + i)}))
	}
	other := o.track(kafka.Message{Partition: 2, Offset: 3})
	ready := func() map[int]int64 {
		o.signal()
		msgs, _ := o.wait()
		got := map[int]int64{}
		for _, m := range msgs {
			got[m.Partition] = m.Offset
		}
		return got
	}
	o.done([]*entry{es[1], es[2], es[4]})
	if got := ready(); len(got) != 0 {
		t.Fatalf("ready %v with offset 10 not done, want nothing", got)
	}
	o.done([]*entry{es[0], other})
	if got := ready(); got[1] != 12 || got[2] != 3 {
		t.Fatalf("ready %v, want partition 1 at 12 (13 is not done) and partition 2 at 3", got)
	}
	// The reader went back (a rebalance): what was in flight no longer counts.
	again := o.track(kafka.Message{Partition: 1, Offset: 13})
	o.done([]*entry{es[3]})
	if got := ready(); len(got) != 0 {
		t.Fatalf("ready %v after a stale completion, want nothing", got)
	}
	o.done([]*entry{again})
	if got := ready(); got[1] != 13 {
		t.Fatalf("ready %v, want partition 1 at 13", got)
	}
	o.close()
	if _, closed := o.wait(); !closed {
		t.Fatal("not closed")
	}
}
