package router

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// NotifyStream: notifications sent one by one on a long-lived stream, each
// routed exactly as a Notify (Service.notify) and answered once, with its
// sequence. The invariants:
//
//   - A notification read from the stream holds one of its StreamMaxInFlight
//     slots until its response has been sent; the stream is read only with
//     a free slot, so it holds at most StreamMaxInFlight notifications and
//     results, and what a caller sends beyond waits in gRPC's flow control.
//   - Once the stream stops (the caller's end, idle, the router draining),
//     nothing read afterwards is routed, and everything routed before is
//     answered before the stream ends: a notification without a response
//     was not routed by this stream, or was routed and may be sent again
//     with its idempotency key.
//   - One goroutine receives (reader); each notification is routed, and its
//     response sent, on a goroutine of its own, so that a stream's
//     notifications share the publisher's Redis pipelines; sends take
//     sendMu. The handler's goroutine only waits for the stream to stop
//     (the caller's end, idle, draining), so that a notification costs no
//     wake-up of it.

// maxStreamInFlight bounds Config.StreamMaxInFlight.
const maxStreamInFlight = 1024

// admitFunc makes the caller's checks of one notification of a stream: its
// rate limit, its permissions, its defaults (Callers.StreamInterceptor). A
// non-nil error refuses the notification alone.
type admitFunc func(ctx context.Context, n *heraldv1.NotifyRequest) error

// admitKey is the context key of a stream's admitFunc.
type admitKey struct{}

func withAdmit(ctx context.Context, f admitFunc) context.Context {
	return context.WithValue(ctx, admitKey{}, f)
}

// errStreamDraining ends the streams of a router that is shutting down.
var errStreamDraining = status.Error(codes.Unavailable,
	"router: shutting down; every notification read was answered: send the unanswered ones again on a new stream, with their idempotency keys")

// NotifyStream routes the notifications of a stream, each as Notify would,
// concurrently, and answers each with its sequence.
func (s *Service) NotifyStream(stream grpc.BidiStreamingServer[heraldv1.NotifyStreamRequest, heraldv1.NotifyStreamResponse]) error {
	ctx := stream.Context()
	admit, _ := ctx.Value(admitKey{}).(admitFunc)
	n := &notifyStream{
		s:           s,
		stream:      stream,
		ctx:         ctx,
		admit:       admit,
		correlation: correlationID(ctx),
		slots:       make(chan struct{}, s.cfg.StreamMaxInFlight),
		stop:        make(chan struct{}),
		last:        time.Now(),
	}
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()
	return n.run()
}

// notifyStream is one NotifyStream call.
type notifyStream struct {
	s           *Service
	stream      grpc.BidiStreamingServer[heraldv1.NotifyStreamRequest, heraldv1.NotifyStreamResponse]
	ctx         context.Context
	admit       admitFunc // nil: a router without authentication
	correlation string

	slots    chan struct{}  // one per notification read and not answered
	stop     chan struct{}  // closed when the stream stops reading
	answered sync.WaitGroup // a notification read, until its response is sent

	sendMu  sync.Mutex
	sendErr error // the first failed Send: the caller is gone

	mu      sync.Mutex
	stopped bool      // read nothing more: what is read now is dropped, unanswered
	pending int       // notifications routing or awaiting their response
	last    time.Time // the last notification received or answered
}

// run reads the stream on a goroutine of its own until the stream stops,
// then waits for what is pending to be answered and ends it.
func (n *notifyStream) run() error {
	readDone := make(chan error, 1) // the reader may outlive run: it never blocks on it
	go n.read(readDone)
	idle := time.NewTimer(n.s.cfg.StreamIdleTimeout)
	defer idle.Stop()
	for {
		select {
		case err := <-readDone:
			if errors.Is(err, io.EOF) {
				err = nil // the caller has sent everything: answer it, end with OK
			}
			return n.finish(err)
		case <-idle.C:
			if d := n.idleFor(); d > 0 {
				idle.Reset(d)
				continue
			}
			return n.finish(nil)
		case <-n.s.draining:
			return n.finish(errStreamDraining)
		case <-n.ctx.Done():
			return n.finish(n.ctx.Err())
		}
	}
}

// idleFor is how much longer the stream must stay idle to be ended: 0 when
// it has been idle for StreamIdleTimeout, with nothing in flight.
func (n *notifyStream) idleFor() time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pending > 0 {
		return n.s.cfg.StreamIdleTimeout
	}
	return max(0, n.s.cfg.StreamIdleTimeout-time.Since(n.last))
}

// finish stops reading, waits for the response of every notification read
// before to be sent, and returns the stream's status.
func (n *notifyStream) finish(err error) error {
	n.mu.Lock()
	n.stopped = true // no answered.Add after this
	n.mu.Unlock()
	close(n.stop)
	n.answered.Wait()
	if err == nil || status.Code(err) != codes.Unknown {
		return err
	}
	return toStatus(n.ctx, err)
}

// send sends one response, unless the stream is already broken, and
// frees its notification's slot.
func (n *notifyStream) send(r *heraldv1.NotifyStreamResponse) {
	n.sendMu.Lock()
	if n.sendErr == nil {
		n.sendErr = n.stream.Send(r)
	}
	n.sendMu.Unlock()
	n.mu.Lock()
	n.pending--
	n.last = time.Now()
	n.mu.Unlock()
	<-n.slots
	n.answered.Done()
}

// read receives the stream's notifications, each once a slot is free, and
// routes each on a goroutine of its own, until the stream stops or ends.
func (n *notifyStream) read(done chan<- error) {
	for {
		select {
		case n.slots <- struct{}{}:
		case <-n.stop:
			done <- nil
			return
		}
		req := new(heraldv1.NotifyStreamRequest)
		if err := n.stream.RecvMsg(req); err != nil {
			<-n.slots
			done <- err
			return
		}
		decodeErr := decodeError(n.stream.Context())
		n.mu.Lock()
		if n.stopped {
			// Read after the stream stopped: not routed, not answered.
			n.mu.Unlock()
			<-n.slots
			done <- nil
			return
		}
		n.pending++
		n.last = time.Now()
		n.answered.Add(1)
		n.mu.Unlock()
		// The caller's checks run here, in the stream's order, so that the
		// notifications over its rate limit are the later ones; each is a
		// token bucket and a pattern match, without I/O.
		notification, err := n.check(req, decodeErr)
		if err != nil {
			n.send(&heraldv1.NotifyStreamResponse{Sequence: req.GetSequence(),
				Result: &heraldv1.NotifyStreamResponse_Error{Error: streamError(err)}})
			continue
		}
		go func() { n.send(n.route(req.GetSequence(), notification)) }()
	}
}

// check makes the caller's checks of a notification read from the stream,
// and returns the notification to route, or why it is refused.
func (n *notifyStream) check(req *heraldv1.NotifyStreamRequest, decodeErr error) (*heraldv1.NotifyRequest, error) {
	notification := req.GetNotification()
	if notification == nil {
		notification = &heraldv1.NotifyRequest{} // refused by validation, naming user_id
	}
	if n.admit != nil {
		if err := n.admit(n.ctx, notification); err != nil {
			return nil, err
		}
	}
	if decodeErr != nil {
		return nil, invalidArgument([]violation{{"request", decodeErr.Error()}})
	}
	return notification, nil
}

// route routes one notification of the stream, as Notify, and returns its
// response. With tracing, each notification is a span of its own, under the
// stream's, with the spans of its validation and publication.
func (n *notifyStream) route(seq uint64, req *heraldv1.NotifyRequest) *heraldv1.NotifyStreamResponse {
	ctx := n.ctx
	var span trace.Span
	if n.s.tracer != nil {
		ctx, span = n.s.tracer.Start(ctx, "herald.notify", trace.WithAttributes(attribute.Int64("herald.stream.sequence", int64(seq))))
		defer span.End()
	}
	resp := &heraldv1.NotifyStreamResponse{Sequence: seq}
	r, err := n.s.notify(ctx, req, n.correlation)
	if err != nil {
		if span != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		resp.Result = &heraldv1.NotifyStreamResponse_Error{Error: streamError(err)}
		return resp
	}
	resp.Result = &heraldv1.NotifyStreamResponse_Response{Response: r}
	return resp
}

// streamError is a notification's error as its response carries it.
func streamError(err error) *heraldv1.NotifyStreamError {
	st := status.Convert(err)
	e := &heraldv1.NotifyStreamError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			e.RetryDelay = ri.GetRetryDelay()
		}
	}
	return e
}
