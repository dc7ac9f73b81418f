package fcm

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
)

// settle acts on the outcomes: it records the sent ones in the dedupe
// window, removes dead tokens, and builds the retry and dead-letter records.
func (w *Worker) settle(ctx context.Context, items []item, pushes []push, outcomes []outcome, trail *trails, now time.Time) (retries, deads []kafka.Message, err error) {
	type tally struct {
		sent, dead  int
		retryTokens []string
		retryAfter  time.Duration
		retryCode   string
		retryMsg    string
		permCode    string
		permMsg     string
		permTokens  int
		deadCode    string
	}
	tallies := make([]tally, len(items))
	deadTokens := map[string][]string{} // user → tokens
	// accepted holds the hashes of each notification's tokens that FCM
	// accepted, recorded below with one SADD a notification.
	accepted := make([][]any, len(items))
	sentMessages := 0
	for j, o := range outcomes {
		push := pushes[j]
		t := &tallies[push.item]
		env := items[push.item].env
		if o.class != sent {
			w.metrics.messages.WithLabelValues(messageLabel(o)).Inc()
		}
		switch o.class {
		case sent:
			t.sent++
			sentMessages++
			accepted[push.item] = append(accepted[push.item], push.hash)
		case deadToken:
			t.dead++
			t.deadCode = o.code
			deadTokens[env.GetUserId()] = append(deadTokens[env.GetUserId()], push.token)
		case retryable:
			t.retryTokens = append(t.retryTokens, push.token)
			t.retryAfter = max(t.retryAfter, o.retryAfter)
			t.retryCode, t.retryMsg = o.code, o.msg
		case permanent:
			t.permTokens++
			t.permCode, t.permMsg = o.code, o.msg
		}
	}
	if sentMessages > 0 {
		w.metrics.messages.WithLabelValues("sent").Add(float64(sentMessages))
		_, err = w.deps.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, hashes := range accepted {
				if len(hashes) > 0 {
					p.SAdd(ctx, items[i].sentKey, hashes...)
					p.PExpire(ctx, items[i].sentKey, w.cfg.DedupeWindow)
				}
			}
			return nil
		})
	}
	if err != nil {
		// The pushes went out; without the dedupe record a redelivery may
		// push them again, which at-least-once allows. Go on.
		w.log.Warn("fcm: dedupe record failed", slog.Any("err", err))
	}
	for user, tokens := range deadTokens {
		n, err := w.deps.Devices.Unregister(ctx, user, tokens...)
		if err != nil {
			w.log.Warn("fcm: removing dead tokens failed", slog.Any("err", err))
			continue
		}
		w.metrics.tokensRemoved.Add(float64(n))
	}

	for i, t := range tallies {
		it := items[i]
		attempts := int(it.task.GetAttempts())
		if len(t.retryTokens) > 0 {
			attempts++
			first := now
			if ff := it.task.GetFirstFailureAt(); ff != nil {
				first = ff.AsTime()
			}
			if attempts >= w.cfg.MaxAttempts || now.Sub(first) >= w.cfg.MaxRetryAge {
				w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
				w.log.Warn("fcm: retry budget spent; dead-lettered", append(w.attrs(it.env),
					slog.String("code", t.retryCode), slog.Int("attempts", attempts))...)
				deads = append(deads, w.deadLetter(it, t.retryCode, t.retryMsg, attempts, len(t.retryTokens), now))
				trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.retryCode, "fcm_attempts", attempts)
			} else {
				w.metrics.notifications.WithLabelValues("retry_queued").Inc()
				at := now.Add(max(t.retryAfter, w.backoff(attempts)))
				retries = append(retries, w.retryRecord(it, t.retryTokens, attempts, first, at, t.retryCode, now))
				trail.add(it.env, "fcm_retry_ms", at.UnixMilli(), "fcm_code", t.retryCode, "fcm_attempts", attempts)
			}
		}
		if t.permTokens > 0 {
			w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
			w.log.Warn("fcm: permanent failure; dead-lettered", append(w.attrs(it.env), slog.String("code", t.permCode))...)
			deads = append(deads, w.deadLetter(it, t.permCode, t.permMsg, attempts+1, t.permTokens, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.permCode, "fcm_attempts", attempts+1)
		}
		if t.dead > 0 {
			trail.add(it.env, "fcm_tokens_removed", t.dead)
		}
		if t.sent > 0 {
			w.metrics.notifications.WithLabelValues("sent").Inc()
			trail.add(it.env, "fcm_sent_ms", now.UnixMilli(), "fcm_devices", t.sent)
			if w.log.Enabled(ctx, slog.LevelDebug) {
				w.log.Debug("fcm: pushed", append(w.attrs(it.env), slog.Int("devices", t.sent))...)
			}
		}
		if t.sent == 0 && len(t.retryTokens) == 0 && t.permTokens == 0 && t.dead > 0 {
			// Every token the user had is dead: nothing reached them.
			w.metrics.notifications.WithLabelValues("dead_lettered").Inc()
			deads = append(deads, w.deadLetter(it, t.deadCode, "every device token of the user is dead; the tokens were removed", attempts+1, t.dead, now))
			trail.add(it.env, "fcm_dead_letter_ms", now.UnixMilli(), "fcm_code", t.deadCode)
		}
	}
	return retries, deads, nil
}

// messageLabel is the metric label of one message's outcome.
func messageLabel(o outcome) string {
	switch {
	case o.class == sent:
		return "sent"
	case o.class == deadToken && o.code == "INVALID_ARGUMENT":
		return "invalid_token"
	}
	switch o.code {
	case "UNREGISTERED", "SENDER_ID_MISMATCH", "INVALID_ARGUMENT", "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED":
		return strings.ToLower(o.code)
	}
	return "other"
}

// backoff is the jittered exponential delay before attempt+1.
func (w *Worker) backoff(attempts int) time.Duration {
	d := w.cfg.BackoffBase << min(attempts-1, 30)
	if d <= 0 || d > w.cfg.BackoffMax {
		d = w.cfg.BackoffMax
	}
	// Full jitter, with a floor of half the step so that a retry is never
	// immediate.
	return d/2 + rand.N(d/2+1)
}
