package router

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// maxBatch is the most notifications one NotifyBatch may carry: a batch is
// routed in one Redis pipeline, which holds Redis for its whole length.
const maxBatch = 1000

// BatchPublisher routes many notifications together. *delivery.Publisher
// implements it; with a Publisher that does not, each notification of a
// batch is published on its own, concurrently.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, ns []delivery.Notification) ([]delivery.Result, []error)
}

var _ BatchPublisher = (*delivery.Publisher)(nil)

// deniedKey is the context key of the per-notification refusals of a
// batch, set by the auth interceptor.
type deniedKey struct{}

// withDenied returns ctx carrying denied: denied[i] is notification i's
// refusal, or nil.
func withDenied(ctx context.Context, denied []error) context.Context {
	return context.WithValue(ctx, deniedKey{}, denied)
}

// NotifyBatch routes many notifications, each as Notify would, and answers
// each one's result in order: one notification's error does not fail the
// others.
func (s *Service) NotifyBatch(ctx context.Context, req *heraldv1.NotifyBatchRequest) (*heraldv1.NotifyBatchResponse, error) {
	start := s.now()
	items := req.GetNotifications()
	if len(items) > maxBatch {
		return nil, invalidArgument([]violation{{"notifications",
			fmt.Sprintf("has %d notifications, over the limit of %d: send smaller batches", len(items), maxBatch)}})
	}
	denied, _ := ctx.Value(deniedKey{}).([]error)
	correlation := correlationID(ctx)
	resps := make([]*heraldv1.NotifyResponse, len(items))
	errs := make([]error, len(items))
	envs := make([]*heraldv1.Envelope, len(items))
	modes := make([]heraldv1.DeliveryMode, len(items))
	ns := make([]delivery.Notification, 0, len(items))
	idx := make([]int, 0, len(items))
	for i, it := range items {
		if i < len(denied) && denied[i] != nil {
			errs[i] = denied[i]
			continue
		}
		if err := s.validate(it); err != nil {
			errs[i] = err
			continue
		}
		envs[i], modes[i] = s.notifyEnvelope(start, it, correlation)
		ns = append(ns, delivery.Notification{Env: envs[i], IdempotencyKey: idempotencyKey(ctx, it.GetIdempotencyKey())})
		idx = append(idx, i)
	}
	results, perrs := s.publishBatch(ctx, ns)
	var failed int
	var firstErr error
	for k, i := range idx {
		if err := perrs[k]; err != nil {
			s.metrics.countError(err)
			if failed++; firstErr == nil {
				firstErr = err
			}
			errs[i] = toStatus(ctx, err)
			continue
		}
		resps[i] = s.notifyResponse(ctx, envs[i], modes[i], results[k])
	}
	if failed > 0 {
		// One line per batch: a Redis outage must not log a thousand.
		s.log.LogAttrs(ctx, slog.LevelWarn, "notify batch failed in part",
			slog.Int("failed", failed), slog.Int("notifications", len(items)),
			slog.String("correlation_id", correlation), slog.Any("err", firstErr))
	}
	d := s.now().Sub(start)
	out := &heraldv1.NotifyBatchResponse{Results: make([]*heraldv1.NotifyBatchResult, len(items))}
	for i := range items {
		if i >= len(denied) || denied[i] == nil { // a refused Notify never reaches Notify's metrics either
			s.metrics.observe(resps[i], errs[i], d)
		}
		st := status.Convert(errs[i])
		out.Results[i] = &heraldv1.NotifyBatchResult{Response: resps[i]}
		if st.Code() != codes.OK {
			out.Results[i].Code, out.Results[i].Message = int32(st.Code()), st.Message()
		}
	}
	return out, nil
}

// publishBatch publishes ns with the publisher's PublishBatch, or, when it
// has none, each on its own, concurrently.
func (s *Service) publishBatch(ctx context.Context, ns []delivery.Notification) ([]delivery.Result, []error) {
	if len(ns) == 0 {
		return nil, nil
	}
	if bp, ok := s.pub.(BatchPublisher); ok {
		return bp.PublishBatch(ctx, ns)
	}
	results, errs := make([]delivery.Result, len(ns)), make([]error, len(ns))
	var wg sync.WaitGroup
	for i, n := range ns {
		wg.Go(func() { results[i], errs[i] = s.pub.Publish(ctx, n.Env, n.IdempotencyKey) })
	}
	wg.Wait()
	return results, errs
}
