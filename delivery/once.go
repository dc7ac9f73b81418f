package delivery

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// go-redis sends a command again after a read timeout or a connection lost
// with the command written: by then Redis may have run it, slowly, and runs
// it a second time. For the scripts that record and publish an event, that
// is the event twice, under two ids, and the caller told it went once. So
// those scripts go out at most once (OnceScript): the error reaches the
// caller, who is answered UNAVAILABLE and retries with its idempotency key
// (docs/reliability.md). Scripts that only make a state so (a lease, a
// record) keep go-redis' retries. The edges' trail counts go once too: a
// second run would count the writes twice.

// onceCmd is a command that go-redis does not send again.
type onceCmd struct{ *redis.Cmd }

// NoRetry tells go-redis not to send the command again.
func (onceCmd) NoRetry() bool { return true }

// Processor is a client or a pipeline.
type Processor interface {
	Process(ctx context.Context, cmd redis.Cmder) error
}

// OnceScript is a Lua script that runs at most once per call.
type OnceScript struct{ src, hash string }

// NewOnceScript returns the script of Lua source src.
func NewOnceScript(src string) OnceScript {
	return OnceScript{src: src, hash: redis.NewScript(src).Hash()}
}

// Source is the script's Lua.
func (s OnceScript) Source() string { return s.src }

// Queue sends the script on c, by its hash (EVALSHA) or, when byHash is
// false, by its source (EVAL), and returns its command; on a pipeline the
// command is done when the pipeline is. args must be scalars (go-redis'
// own Eval would also spread slices and maps).
func (s OnceScript) Queue(ctx context.Context, c Processor, byHash bool, keys []string, args ...any) *redis.Cmd {
	name, body := "evalsha", s.hash
	if !byHash {
		name, body = "eval", s.src
	}
	a := make([]any, 3+len(keys), 3+len(keys)+len(args))
	a[0], a[1], a[2] = name, body, len(keys)
	for i, k := range keys {
		a[3+i] = k
	}
	cmd := redis.NewCmd(ctx, append(a, args...)...)
	if len(keys) > 0 {
		cmd.SetFirstKeyPos(3)
	}
	_ = c.Process(ctx, onceCmd{cmd})
	return cmd
}

// Run runs the script on rdb by its hash and, when Redis has not cached it
// (NOSCRIPT: it did not run), by its source. Each goes as a pipeline of
// one command, the one way to send a command of one's own through a
// redis.Cmdable.
func (s OnceScript) Run(ctx context.Context, rdb redis.Cmdable, keys []string, args ...any) *redis.Cmd {
	var cmd *redis.Cmd
	send := func(byHash bool) {
		_, _ = rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			cmd = s.Queue(ctx, pl, byHash, keys, args...)
			return nil
		})
	}
	if send(true); noScript(cmd.Err()) {
		send(false)
	}
	return cmd
}

// noScript reports whether err is Redis' NOSCRIPT: the script is not
// cached, and did not run.
func noScript(err error) bool {
	return errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")
}
