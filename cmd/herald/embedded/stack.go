package embedded

import (
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm/fcmtest"
)

// Redis is an embedded Redis-protocol server (miniredis) on a free port of
// 127.0.0.1. miniredis only expires keys when told that time has passed, so
// Redis moves its clock on by a second each second until Close.
type Redis struct {
	mr   *miniredis.Miniredis
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// StartRedis starts an embedded Redis and its clock.
func StartRedis() (*Redis, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	r := &Redis{mr: mr, stop: make(chan struct{}), done: make(chan struct{})}
	go r.tick()
	return r, nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.mr.Addr() }

// Close stops the clock and the server. It may be called more than once.
func (r *Redis) Close() {
	r.once.Do(func() {
		close(r.stop)
		<-r.done
		r.mr.Close()
	})
}

// tick advances the server's clock for key expiry.
func (r *Redis) tick() {
	defer close(r.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.mr.FastForward(time.Second)
		}
	}
}

// StartKafka starts a one-broker Kafka wire-protocol broker (kfake) with
// Herald's default offline, retry and dead-letter topics, three partitions
// each. Close it when done.
func StartKafka() (*kfake.Cluster, error) {
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3,
		queue.DefaultOfflineTopic, queue.DefaultRetryTopic, queue.DefaultDeadLetterTopic))
	if err != nil {
		return nil, fmt.Errorf("embedded kafka: %w", err)
	}
	return kf, nil
}

// StartFCM starts the FCM emulator on addr for project. Close it when done.
func StartFCM(addr, project string) (*fcmtest.Server, error) {
	emu, err := fcmtest.New(fcmtest.Config{Addr: addr, Project: project})
	if err != nil {
		return nil, err
	}
	if err := emu.Start(); err != nil {
		return nil, fmt.Errorf("embedded FCM emulator: %w", err)
	}
	return emu, nil
}
