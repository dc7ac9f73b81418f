package delivery

import (
	"context"
	"time"
)

// Hooks into the package's internals for its external tests.

// BeforeScripts makes p call f before each pipeline of notify scripts goes
// to Redis: after Publish has scheduled a receipt's deadline, before the
// script creates the receipt.
func BeforeScripts(p *Publisher, f func()) {
	run := p.pipe.run
	p.pipe.run = func(ctx context.Context, calls []*notifyCall) {
		f()
		run(ctx, calls)
	}
}

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
