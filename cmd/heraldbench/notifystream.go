package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// The NotifyStream sender, and the notifystream scenario, which weighs it
// against unary Notify at low rates: the same open loop, the same streams
// held, the same router, alternately one and the other in one run.

// streamConfig is the NotifyStream flags.
type streamConfig struct {
	use    bool      // -notify-stream: unicast and pollpush send on NotifyStream
	rates  []float64 // notifystream scenario
	rounds int
}

func streamFlags(fs *flag.FlagSet, c *streamConfig) {
	fs.BoolVar(&c.use, "notify-stream", false, "unicast and pollpush scenarios: send the notifications on one NotifyStream per sender instead of unary Notify calls")
	fs.Func("stream-rates", "notifystream scenario: rates, notifications a second, comma-separated (default 333,1000)", func(s string) error {
		c.rates = nil
		for _, r := range strings.Split(s, ",") {
			v, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
			if err != nil || v <= 0 {
				return fmt.Errorf("bad rate %q", r)
			}
			c.rates = append(c.rates, v)
		}
		return nil
	})
	fs.IntVar(&c.rounds, "stream-rounds", 2, "notifystream scenario: rounds of unary then stream, each -duration long, at each rate")
}

// streamSender sends notifications on one NotifyStream, and makes each
// call wait for its own response, so that the open loop measures a
// stream's notifications as it measures Notify calls.
type streamSender struct {
	stream grpc.BidiStreamingClient[heraldv1.NotifyStreamRequest, heraldv1.NotifyStreamResponse]
	cancel context.CancelFunc
	seq    atomic.Uint64
	done   chan struct{} // closed when the stream has ended

	mu      sync.Mutex // Send, waiting and err
	waiting map[uint64]chan *heraldv1.NotifyStreamResponse
	err     error // why the stream ended
}

func newStreamSender(ctx context.Context, client heraldv1.RouterServiceClient) (*streamSender, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := client.NotifyStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &streamSender{stream: stream, cancel: cancel, done: make(chan struct{}),
		waiting: make(map[uint64]chan *heraldv1.NotifyStreamResponse)}
	go s.receive()
	return s, nil
}

// receive hands each response to its call until the stream ends.
func (s *streamSender) receive() {
	defer close(s.done)
	for {
		r, err := s.stream.Recv()
		s.mu.Lock()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("NotifyStream ended")
			}
			s.err = err
			s.mu.Unlock()
			return
		}
		ch := s.waiting[r.GetSequence()]
		delete(s.waiting, r.GetSequence())
		s.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// notifier makes call i a notification to user prefix+(i mod users) on
// the stream, and fails it unless it was routed online.
func (s *streamSender) notifier(prefix string, users int) callFunc {
	return func(ctx context.Context, i int, sched time.Time) error {
		seq := s.seq.Add(1)
		ch := make(chan *heraldv1.NotifyStreamResponse, 1)
		s.mu.Lock()
		if s.err != nil {
			s.mu.Unlock()
			return s.err
		}
		s.waiting[seq] = ch
		err := s.stream.Send(&heraldv1.NotifyStreamRequest{Sequence: seq, Notification: &heraldv1.NotifyRequest{
			UserId: prefix + strconv.Itoa(i%users), Event: "bench", Data: notifyData(sched, i)}})
		if err != nil {
			delete(s.waiting, seq)
		}
		s.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case r := <-ch:
			if e := r.GetError(); e != nil {
				return fmt.Errorf("%s: %s", codes.Code(e.GetCode()), e.GetMessage())
			}
			if route := r.GetResponse().GetRoute(); route != heraldv1.Route_ROUTE_ONLINE {
				return fmt.Errorf("route %s, want online", route)
			}
			return nil
		case <-s.done:
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close ends the stream once every response has come, or after 10 s.
func (s *streamSender) close() {
	s.mu.Lock()
	_ = s.stream.CloseSend()
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	s.cancel()
	<-s.done
}

// sender is the callFunc of an open-loop sender through client: unary
// Notify calls, or with stream a NotifyStream, and what ends it.
func sender(ctx context.Context, client heraldv1.RouterServiceClient, stream bool, prefix string, users int) (callFunc, func(), error) {
	if !stream {
		return notifier(client, prefix, users), func() {}, nil
	}
	s, err := newStreamSender(ctx, client)
	if err != nil {
		return nil, nil, err
	}
	return s.notifier(prefix, users), s.close, nil
}

// notifyStream weighs NotifyStream against unary Notify at each rate: the
// same streams held, alternately a round of each, the sender in a child
// process (its CPU is not the servers'), and for each the servers' CPU per
// notification and the Notify→receive latency.
func (b *bench) notifyStream(ctx context.Context) error {
	c := b.cfg.stream
	rates := c.rates
	if len(rates) == 0 {
		rates = []float64{333, 1000}
	}
	prefix := b.tag + "-ns-"
	b.progress("notifystream: opening %d streams", b.cfg.conns)
	f, err := openFleet(ctx, b.fleetConfig(prefix, b.cfg.conns, ""))
	if err != nil {
		return err
	}
	defer f.close()
	time.Sleep(2 * time.Second) // leases written, buffers settled
	child, err := startChild(ctx)
	if err != nil {
		return err
	}
	defer child.stop()
	for _, rate := range rates {
		type sums struct {
			cpu        time.Duration
			each       []time.Duration // per server process
			sent, got  int
			failed     int
			firstErr   string
			lat, calls hist
		}
		var unary, stream sums
		for round := range 2 * max(c.rounds, 1) {
			useStream := round%2 == 1
			s := &unary
			if useStream {
				s = &stream
			}
			if err := f.reset(); err != nil {
				return err
			}
			b.progress("notifystream: %.0f/s for %s, stream %v (round %d)", rate, b.cfg.duration, useStream, round/2+1)
			cpu0 := b.serverCPU()
			r, err := child.call(command{Op: "notify", Grpc: b.cfg.grpcAddr, Prefix: prefix, Count: f.conns,
				Rate: rate, For: b.cfg.duration, Workers: b.cfg.workers, Stream: useStream})
			cpu, each := b.cpuSince(cpu0)
			if err == nil && r.Error != "" {
				err = errors.New(r.Error)
			}
			if err != nil {
				return err
			}
			got, err := f.waitReceived(uint64(r.Load.Sent-r.Load.Failed), 5*time.Second)
			if err != nil {
				return err
			}
			s.cpu += cpu
			if s.each == nil {
				s.each = make([]time.Duration, len(each))
			}
			for i := range each {
				s.each[i] += each[i]
			}
			s.sent += r.Load.Sent
			s.failed += r.Load.Failed
			s.got += int(got.Received)
			if s.firstErr == "" {
				s.firstErr = r.Load.FirstErr
			}
			s.calls.merge(&r.Load.Latency)
			if got.Latency != nil {
				s.lat.merge(got.Latency)
			}
		}
		sc := fmt.Sprintf("notifystream %s/s", formatValue(rate))
		perEvent := func(s sums) float64 { return float64(s.cpu.Microseconds()) / float64(max(s.got, 1)) }
		b.rep.add(sc, "unary Notify: server CPU per notification", perEvent(unary), "µs")
		b.rep.addVs(sc, "NotifyStream: server CPU per notification", perEvent(stream), "µs", perEvent(unary), "unary Notify")
		for i, p := range b.serverProcs() {
			u := float64(unary.each[i].Microseconds()) / float64(max(unary.got, 1))
			st := float64(stream.each[i].Microseconds()) / float64(max(stream.got, 1))
			b.rep.add(sc, "unary Notify: CPU per notification of "+p.Name, u, "µs")
			b.rep.addVs(sc, "NotifyStream: CPU per notification of "+p.Name, st, "µs", u, "unary Notify")
		}
		b.rep.addVs(sc, "NotifyStream: delivered", float64(stream.got), "events", float64(stream.sent), "sent")
		b.rep.addVs(sc, "unary Notify: delivered", float64(unary.got), "events", float64(unary.sent), "sent")
		b.rep.addLatency(sc, "unary Notify→receive", &unary.lat, nil, "")
		b.rep.addLatency(sc, "NotifyStream→receive", &stream.lat, &unary.lat, "unary Notify")
		b.rep.addVs(sc, "NotifyStream call p99 (from schedule)", ms(stream.calls.quantile(0.99)), "ms",
			ms(unary.calls.quantile(0.99)), "unary Notify")
		for name, s := range map[string]sums{"unary": unary, "stream": stream} {
			if s.failed > 0 {
				b.rep.note("%s: %s: %d failed; first: %s", sc, name, s.failed, s.firstErr)
			}
		}
	}
	b.rep.note("notifystream: server CPU is the CPU time of %s over each round, divided by the events delivered; the sender runs in a child process, %d streams held", b.serverNames(), f.conns)
	return nil
}
