package receipts

import (
	"context"
	"time"
)

// Hooks into the package's internals for its external tests.

// SweepAt makes one pass of s over every shard of the index, as at now.
func SweepAt(ctx context.Context, s *Sweeper, now time.Time) error {
	s.now = func() time.Time { return now }
	for n := range s.r.cfg.Shards {
		for {
			more, err := s.sweep(ctx, n)
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
	}
	return nil
}
