package fcm

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery/queue"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The dead-letter codes of Herald's own, beside FCM's.
const (
	// CodeNoDevice: the user had no registered device.
	CodeNoDevice = "NO_DEVICE"
	// CodeUndecodable: the record could not be decoded; the dead letter is
	// the record as it was, with HeaderErrorCode set.
	CodeUndecodable = "UNDECODABLE"
)

// HeaderErrorCode carries a dead letter's error code, so that tools can
// filter without decoding.
const HeaderErrorCode = "herald-error-code"

func (w *Worker) deadLetter(it item, code, msg string, attempts, devices int, now time.Time) kafka.Message {
	dl := &heraldv1.DeadLetter{
		Envelope:       it.env,
		ErrorCode:      code,
		ErrorMessage:   msg,
		Attempts:       int32(attempts),
		LastFailureAt:  timestamppb.New(now),
		FirstFailureAt: timestamppb.New(now),
		Devices:        int32(devices),
		DeadLetteredAt: timestamppb.New(now),
	}
	if ff := it.task.GetFirstFailureAt(); ff != nil {
		dl.FirstFailureAt = ff
	}
	w.metrics.deadLetters.WithLabelValues(code).Inc()
	return record(it.env, dl, kafka.Header{Key: HeaderErrorCode, Value: []byte(code)})
}

// record is a retry or dead-letter record of env: keyed by user, like the
// offline topic's, with the notification id and extra in its headers.
func record(env *heraldv1.Envelope, value proto.Message, extra kafka.Header) kafka.Message {
	b, _ := proto.Marshal(value)
	return kafka.Message{
		Key:     []byte(env.GetUserId()),
		Value:   b,
		Headers: queue.AppendTraceHeaders([]kafka.Header{{Key: queue.HeaderNotificationID, Value: []byte(env.GetId())}, extra}, env),
	}
}

func (w *Worker) retryRecord(it item, tokens []string, attempts int, first, at time.Time, code string, now time.Time) kafka.Message {
	t := &heraldv1.PushTask{
		Envelope:       it.env,
		Tokens:         tokens,
		Attempts:       int32(attempts),
		NotBefore:      timestamppb.New(at),
		FirstFailureAt: timestamppb.New(first),
		LastFailureAt:  timestamppb.New(now),
		LastErrorCode:  code,
	}
	w.metrics.retries.WithLabelValues(code).Inc()
	return record(it.env, t, kafka.Header{Key: headerNotBefore, Value: []byte(strconv.FormatInt(at.UnixMilli(), 10))})
}

// headerNotBefore carries a retry record's not-before time in Unix ms.
const headerNotBefore = "herald-not-before"

// notBefore reads a retry record's time from its header, without decoding
// the value.
func notBefore(m kafka.Message) time.Time {
	for _, h := range m.Headers {
		if h.Key == headerNotBefore {
			if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
				return time.UnixMilli(ms)
			}
		}
	}
	return time.Time{}
}

// write writes records durably, retrying until it works or ctx ends: the
// batch's offsets are committed only after this.
func (w *Worker) write(ctx context.Context, wr *kafka.Writer, msgs []kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		wctx, cancel := w.cfg.Kafka.WriteContext(ctx)
		err := wr.WriteMessages(wctx, msgs...)
		cancel()
		if err == nil {
			return nil
		}
		w.log.Warn("fcm: writing to kafka failed; retrying", slog.String("topic", wr.Topic),
			slog.Int("records", len(msgs)), slog.Any("err", err))
		if !sleep(ctx, delay) {
			return fmt.Errorf("fcm: write %s: %w", wr.Topic, err)
		}
	}
}
