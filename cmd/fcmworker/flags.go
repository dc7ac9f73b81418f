package main

import (
	"flag"
	"time"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/fcm/fcmtest"
)

// WorkerFlags are the worker's own flags.
type WorkerFlags struct {
	Project, Credentials, Endpoint string
	GroupID                        string
	BatchSize, MaxAttempts         int
	MaxRetryAge                    time.Duration
	BackoffBase, BackoffMax        time.Duration
	DedupeWindow                   time.Duration
	SessionTimeout                 time.Duration
	SendTimeout                    time.Duration
	Concurrency, Conns             int
	H2C                            bool
	Quota                          int
	QuotaShare                     float64
}

// Register defines the flags on fs.
func (f *WorkerFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Project, "fcm-project", "", "Firebase project id (default: the credentials' project)")
	fs.StringVar(&f.Credentials, "fcm-credentials", "", "service-account JSON key file (default: Google application default credentials)")
	fs.StringVar(&f.Endpoint, "fcm-endpoint", "", "send to this FCM-compatible endpoint without credentials, e.g. an emulator's http://"+fcmtest.DevAddr+"/v1")
	fs.StringVar(&f.GroupID, "group-id", fcm.DefaultGroupID, "Kafka consumer group (the retry topic uses <group-id>.retry)")
	fs.IntVar(&f.BatchSize, "batch-size", fcm.DefaultBatchSize, "notifications handled together")
	fs.IntVar(&f.MaxAttempts, "max-attempts", fcm.DefaultMaxAttempts, "push attempts before a retryable failure is dead-lettered")
	fs.DurationVar(&f.MaxRetryAge, "max-retry-age", fcm.DefaultMaxRetryAge, "time since the first failure after which a push is dead-lettered")
	fs.DurationVar(&f.BackoffBase, "backoff-base", fcm.DefaultBackoffBase, "first retry delay, doubled at each attempt, with jitter")
	fs.DurationVar(&f.BackoffMax, "backoff-max", fcm.DefaultBackoffMax, "largest retry delay")
	fs.DurationVar(&f.SessionTimeout, "kafka-session-timeout", fcm.DefaultSessionTimeout, "how long the group waits for a silent worker before its partitions move to the others")
	fs.IntVar(&f.Concurrency, "concurrency", fcm.DefaultConcurrency, "batches pushed at once per topic; one user's notifications stay in order")
	fs.IntVar(&f.Conns, "fcm-conns", fcm.DefaultConns, "FCM clients the sends are spread over, each with its own HTTP/2 connections")
	fs.BoolVar(&f.H2C, "fcm-h2c", false, "with -fcm-endpoint http://..., speak HTTP/2 without TLS (the emulator serves it)")
	fs.IntVar(&f.Quota, "fcm-quota", fcm.DefaultQuotaPerMinute, "the Firebase project's FCM quota, messages a minute; negative: no limit")
	fs.Float64Var(&f.QuotaShare, "fcm-quota-share", fcm.DefaultQuotaShare, "share of -fcm-quota this worker sends at most (0.95/N each for N workers of one project)")
	fs.DurationVar(&f.SendTimeout, "fcm-send-timeout", fcm.DefaultSendTimeout, "deadline of one FCM SendEach call (up to 50 messages, with the SDK's own retries); a call past it is retried as DEADLINE_EXCEEDED")
	fs.DurationVar(&f.DedupeWindow, "dedupe-window", fcm.DefaultDedupeWindow, "how long a push is remembered so that a redelivered record is not pushed twice")
}

// Client is the FCM client configuration.
func (f *WorkerFlags) Client() fcm.ClientConfig {
	return fcm.ClientConfig{Project: f.Project, CredentialsFile: f.Credentials, Endpoint: f.Endpoint, Conns: f.Conns, H2C: f.H2C}
}

// Config is the worker configuration.
func (f *WorkerFlags) Config(k daemon.Kafka) fcm.Config {
	return fcm.Config{
		Kafka:           k.Config(),
		OfflineTopic:    k.OfflineTopic,
		RetryTopic:      k.RetryTopic,
		DeadLetterTopic: k.DeadLetterTopic,
		GroupID:         f.GroupID,
		BatchSize:       f.BatchSize,
		MaxAttempts:     f.MaxAttempts,
		MaxRetryAge:     f.MaxRetryAge,
		BackoffBase:     f.BackoffBase,
		BackoffMax:      f.BackoffMax,
		DedupeWindow:    f.DedupeWindow,
		SessionTimeout:  f.SessionTimeout,
		Concurrency:     f.Concurrency,
		QuotaPerMinute:  f.Quota,
		QuotaShare:      f.QuotaShare,
		SendTimeout:     f.SendTimeout,
	}
}
