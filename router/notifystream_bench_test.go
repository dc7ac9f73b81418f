package router_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// NotifyStream against unary Notify, in the same run, on the same router,
// with the process CPU (router and client: both in this process) per
// notification:
//
//	go test -run '^$' -bench 'NotifyVsStream' -benchtime 20000x ./router/
//
// sequential: one notification at a time (the low-rate case: every
// notification pays every wake-up); 16 in flight: 16 callers, or a stream
// with 16 unanswered.
func BenchmarkNotifyVsStream(b *testing.B) {
	for _, inFlight := range []int{1, 16} {
		b.Run(map[int]string{1: "sequential", 16: "16-in-flight"}[inFlight], func(b *testing.B) {
			b.Run("unary", func(b *testing.B) { benchUnary(b, inFlight) })
			b.Run("stream", func(b *testing.B) { benchStream(b, inFlight) })
		})
	}
}

func benchUnary(b *testing.B, inFlight int) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	ctx := context.Background()
	req := &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload}
	next := make(chan struct{})
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for range next {
				if _, err := r.client.Notify(ctx, req); err != nil {
					b.Error(err)
				}
			}
		})
	}
	cpu := startCPU(b)
	b.ResetTimer()
	for b.Loop() {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	cpu.report(b)
}

func benchStream(b *testing.B, inFlight int) {
	r := newTestRouter(b, nil)
	drain(b, r, "bench")
	s, err := r.client.NotifyStream(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	req := &heraldv1.NotifyStreamRequest{Notification: &heraldv1.NotifyRequest{UserId: "bench", Event: "update", Data: payload}}
	// slots holds one token per notification unanswered.
	slots := make(chan struct{}, inFlight)
	received := make(chan error, 1)
	go func() {
		for {
			resp, err := s.Recv()
			if err != nil {
				received <- err
				return
			}
			if resp.GetResponse() == nil {
				b.Error(resp.GetError())
			}
			<-slots
		}
	}()
	cpu := startCPU(b)
	b.ResetTimer()
	var seq uint64
	for b.Loop() {
		slots <- struct{}{}
		seq++
		req.Sequence = seq
		if err := s.Send(req); err != nil {
			b.Fatal(err)
		}
	}
	for range inFlight {
		slots <- struct{}{} // every notification answered
	}
	b.StopTimer()
	cpu.report(b)
	if err := s.CloseSend(); err != nil {
		b.Fatal(err)
	}
	if err := <-received; !errors.Is(err, io.EOF) {
		b.Fatal(err)
	}
}
