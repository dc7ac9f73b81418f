package main

import (
	"strings"

	"github.com/herald-push/herald/cmd/herald/embedded"
)

// stack is the services Herald runs on: those named by flags, and embedded
// stand-ins for the others.
type stack struct {
	redisAddr, brokers, fcmEndpoint string // what Herald is given
	redisNote, kafkaNote, fcmNote   string // what each is, for the banner
	closers                         []func()
}

// startStack starts an embedded Redis when redisAddr is empty, an embedded
// Kafka when brokers is, and the FCM emulator on emuAddr when fcmEndpoint
// is. On error, what it started is closed.
func startStack(redisAddr, brokers, fcmEndpoint, emuAddr, project string) (*stack, error) {
	s := &stack{redisAddr: redisAddr, brokers: brokers, fcmEndpoint: fcmEndpoint,
		redisNote: redisAddr, kafkaNote: brokers, fcmNote: fcmEndpoint}
	if redisAddr == "" {
		r, err := embedded.StartRedis()
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, r.Close)
		s.redisAddr, s.redisNote = r.Addr(), "embedded (miniredis at "+r.Addr()+")"
	}
	if brokers == "" {
		kf, err := embedded.StartKafka()
		if err != nil {
			s.close()
			return nil, err
		}
		s.closers = append(s.closers, kf.Close)
		s.brokers = strings.Join(kf.ListenAddrs(), ",")
		s.kafkaNote = "embedded (kfake at " + s.brokers + ")"
	}
	if fcmEndpoint == "" {
		emu, err := embedded.StartFCM(emuAddr, project)
		if err != nil {
			s.close()
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = emu.Close() })
		s.fcmEndpoint, s.fcmNote = emu.Endpoint(), "embedded emulator at "+emu.URL()
	}
	return s, nil
}

// close stops the embedded parts, the last started first.
func (s *stack) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}
