package fcm

import (
	"sync"

	"github.com/segmentio/kafka-go"
)

// offsets tracks the records of one topic between their fetch and their
// commit. Lanes finish records out of order; a partition is committed only
// as far as every record before is done, so that a crash never skips one.
type offsets struct {
	mu     sync.Mutex
	parts  map[int]*partition
	ready  map[int]kafka.Message // per partition, the last record of its done prefix, not committed yet
	closed bool
	kick   chan struct{} // has a value when ready or closed changed
}

// partition is one partition's fetched records not yet committed, in fetch
// order.
type partition struct {
	pending []*entry
	last    int64
}

// entry is one fetched record.
type entry struct {
	msg  kafka.Message
	done bool
	part *partition
}

func newOffsets() *offsets {
	return &offsets{parts: map[int]*partition{}, ready: map[int]kafka.Message{}, kick: make(chan struct{}, 1)}
}

// track adds a fetched record. A record at or before the partition's last
// one means the reader went back (after a rebalance, it reads again from
// the committed offset): the records in flight there start over, and their
// completions no longer count.
func (o *offsets) track(m kafka.Message) *entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.parts[m.Partition]
	if p == nil || m.Offset <= p.last {
		p = &partition{}
		o.parts[m.Partition] = p
		delete(o.ready, m.Partition)
	}
	p.last = m.Offset
	e := &entry{msg: m, part: p}
	p.pending = append(p.pending, e)
	return e
}

// done marks a batch's records done, and makes ready the records that now
// end a done prefix of their partition.
func (o *offsets) done(batch []*entry) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range batch {
		e.done = true
	}
	moved := false
	for _, e := range batch {
		p := e.part
		if o.parts[e.msg.Partition] != p {
			continue // from before the reader went back
		}
		n := 0
		for n < len(p.pending) && p.pending[n].done {
			n++
		}
		if n > 0 {
			o.ready[e.msg.Partition] = p.pending[n-1].msg
			clear(p.pending[:n])
			p.pending = p.pending[n:]
			moved = true
		}
	}
	if moved {
		o.signal()
	}
}

// wait waits until there are records to commit or offs is closed; it
// returns the records to commit (the last done one of each partition) and
// whether offs is closed.
func (o *offsets) wait() ([]kafka.Message, bool) {
	<-o.kick
	o.mu.Lock()
	defer o.mu.Unlock()
	msgs := make([]kafka.Message, 0, len(o.ready))
	for p, m := range o.ready {
		msgs = append(msgs, m)
		delete(o.ready, p)
	}
	if o.closed {
		o.signal() // the closed state stays visible
	}
	return msgs, o.closed
}

// retry puts back records whose commit failed, unless a later one of their
// partition is ready by now.
func (o *offsets) retry(msgs []kafka.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range msgs {
		if cur, ok := o.ready[m.Partition]; !ok || cur.Offset < m.Offset {
			if p := o.parts[m.Partition]; p != nil && p.last >= m.Offset {
				o.ready[m.Partition] = m
			}
		}
	}
	o.signal()
}

// close says that no more records will be done.
func (o *offsets) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.signal()
}

// signal wakes wait. o.mu is held.
func (o *offsets) signal() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}
