package delivery

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// SendEachThrough makes p send each notification's own notify script
// through s (go-redis's AutoPipeliner, in BenchmarkAutoPipeliner) instead of
// gathering concurrent calls in its own auto-pipeliner and notify_batch
// scripts. Everything else in Publish stays as it is.
func SendEachThrough(p *Publisher, s redis.Scripter) {
	notify := redis.NewScript(p.scripts.notify.Source())
	p.pipe = &autoPipeline{max: 1, run: func(ctx context.Context, calls []*notifyCall) {
		for _, c := range calls {
			if err := c.ctx.Err(); err != nil {
				c.err = err
				continue
			}
			v, err := notify.Run(ctx, s, c.keys, c.args...).Result()
			if err != nil {
				c.err = err
				continue
			}
			c.reply, c.err = batchReply(v)
		}
	}}
}
