package fcm

import (
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/encoding/protowire"
)

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
	at, ok := acceptedAt(m.Value)
	if !ok {
		return
	}
	w.metrics.handoff.Observe(max(w.deps.Now().Sub(at), 0).Seconds())
}

// Field numbers of the wire format that acceptedAt reads:
// Envelope.accepted_at, and google.protobuf.Timestamp's seconds and nanos.
const (
	envelopeAcceptedAt = 5
	timestampSeconds   = 1
	timestampNanos     = 2
)

// acceptedAt reads an encoded Envelope's accepted_at without decoding the
// rest, which handle decodes once later: a full decode here cost the worker
// a second one of every record. It reports false for a record without one
// or one that is not a well-formed envelope.
func acceptedAt(b []byte) (time.Time, bool) {
	var secs, nanos int64
	found := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return time.Time{}, false
		}
		b = b[n:]
		if num != envelopeAcceptedAt || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return time.Time{}, false
			}
			b = b[n:]
			continue
		}
		ts, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return time.Time{}, false
		}
		b = b[n:]
		// A field found twice is merged, as proto.Unmarshal merges it: the
		// last value of each of its fields wins.
		found = true
		for len(ts) > 0 {
			num, typ, n := protowire.ConsumeTag(ts)
			if n < 0 {
				return time.Time{}, false
			}
			ts = ts[n:]
			if typ != protowire.VarintType || (num != timestampSeconds && num != timestampNanos) {
				if n = protowire.ConsumeFieldValue(num, typ, ts); n < 0 {
					return time.Time{}, false
				}
				ts = ts[n:]
				continue
			}
			v, n := protowire.ConsumeVarint(ts)
			if n < 0 {
				return time.Time{}, false
			}
			ts = ts[n:]
			if num == timestampSeconds {
				secs = int64(v)
			} else {
				nanos = int64(int32(v))
			}
		}
	}
	return time.Unix(secs, nanos), found
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
