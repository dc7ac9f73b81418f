package receipts_test

import (
	"context"
	"sync"

	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// recordingQueue is an offline queue that keeps what it takes.
type recordingQueue struct {
	mu   sync.Mutex
	envs []*heraldv1.Envelope
}

func (q *recordingQueue) Enqueue(_ context.Context, env *heraldv1.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.envs = append(q.envs, env)
	return nil
}

func (q *recordingQueue) ids() map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]int{}
	for _, e := range q.envs {
		out[e.GetId()]++
	}
	return out
}

// scheduleHook is the publisher's receipts, calling afterSchedule once the
// deadlines are scheduled: before the notify script creates the receipts.
type scheduleHook struct {
	*receipts.Receipts
	afterSchedule func()
}

func (h *scheduleHook) Schedule(ctx context.Context, envs []*heraldv1.Envelope) []error {
	errs := h.Receipts.Schedule(ctx, envs)
	if h.afterSchedule != nil {
		h.afterSchedule()
	}
	return errs
}

var (
	newPublisherOn = testenv.PublisherOn
	envelope       = testenv.Envelope
)
