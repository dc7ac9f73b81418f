package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Defaults of the gRPC server's limits (Config). Each bounds what one
// connection, or all of them, can make the router hold before and while a
// call is authenticated; docs/security.md lists them.
const (
	// DefaultMaxHeaderBytes bounds a call's metadata (HTTP/2 header list,
	// counted as HTTP/2 does: name + value + 32 bytes a field). 8 KiB holds
	// an API key, traceparent and tracestate, a correlation id and gRPC's
	// own headers several times over; grpc-go's default is 16 MB.
	DefaultMaxHeaderBytes = 8 << 10
	// DefaultMaxRequestBytes bounds one request message: a full NotifyBatch
	// of 1000 notifications of about 4 KiB each, or fewer larger ones. It is
	// grpc-go's default, now stated.
	DefaultMaxRequestBytes = 4 << 20
	// DefaultMaxStreamsPerConn bounds the calls in flight on one connection.
	DefaultMaxStreamsPerConn = 100
	// DefaultMaxConns bounds the router's open gRPC connections; past it
	// a new connection evicts one never authenticated, or is closed.
	// Callers are backend services, each with a few connections.
	DefaultMaxConns = 1024
	// DefaultMaxConnsPerIP bounds the open connections from one client
	// address (IPv6: its /64), which connects without credentials: a
	// service's host holds one connection, or a pool of a few; 64 leave it
	// room, and one address can take at most 1/16 of DefaultMaxConns.
	DefaultMaxConnsPerIP = 64
	// DefaultHandshakeTimeout closes a connection that has not completed
	// its TLS and HTTP/2 handshakes (grpc-go's default: 120 s, during which
	// a socket that sends nothing holds a slot of MaxConns). A caller in
	// the same network needs milliseconds.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultKeepaliveMinTime is the shortest interval at which a client
	// may ping; one that pings faster is disconnected (GOAWAY
	// "too_many_pings"). grpc-go's 5 minutes would disconnect clients that
	// keep connections warm every 10 to 30 s.
	DefaultKeepaliveMinTime = 10 * time.Second
	// DefaultMaxConnIdle closes a connection with no call for this long.
	DefaultMaxConnIdle = 5 * time.Minute
	// DefaultStreamMaxInFlight bounds the notifications of one NotifyStream
	// read and not yet answered: enough to keep a stream busy across a
	// Redis round trip at tens of thousands a second, few enough that a
	// stream holds at most 64 notifications' memory.
	DefaultStreamMaxInFlight = 64
	// DefaultStreamIdleTimeout ends a NotifyStream that has had nothing in
	// flight and received nothing for this long, as MaxConnIdle closes an
	// idle connection: a stream is a call in flight, which would keep its
	// connection open for ever.
	DefaultStreamIdleTimeout = 5 * time.Minute
)

// applyLimitDefaults fills in the zero limits of cfg and checks them.
func (cfg *Config) applyLimitDefaults() error {
	cfg.MaxHeaderBytes = cmp.Or(cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	cfg.MaxRequestBytes = cmp.Or(cfg.MaxRequestBytes, DefaultMaxRequestBytes)
	cfg.MaxStreamsPerConn = cmp.Or(cfg.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	cfg.MaxConns = cmp.Or(cfg.MaxConns, DefaultMaxConns)
	cfg.MaxConnsPerIP = cmp.Or(cfg.MaxConnsPerIP, DefaultMaxConnsPerIP)
	cfg.HandshakeTimeout = cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	cfg.KeepaliveMinTime = cmp.Or(cfg.KeepaliveMinTime, DefaultKeepaliveMinTime)
	cfg.MaxConnIdle = cmp.Or(cfg.MaxConnIdle, DefaultMaxConnIdle)
	cfg.StreamMaxInFlight = cmp.Or(cfg.StreamMaxInFlight, DefaultStreamMaxInFlight)
	cfg.StreamIdleTimeout = cmp.Or(cfg.StreamIdleTimeout, DefaultStreamIdleTimeout)
	switch {
	case cfg.MaxHeaderBytes < 1024:
		return fmt.Errorf("router: max header bytes %d: must be at least 1024 (gRPC's own headers need some)", cfg.MaxHeaderBytes)
	case cfg.MaxStreamsPerConn < 1 || cfg.MaxConns < 1:
		return fmt.Errorf("router: max streams per connection (%d) and max connections (%d) must be at least 1", cfg.MaxStreamsPerConn, cfg.MaxConns)
	case cfg.KeepaliveMinTime < 0 || cfg.MaxConnIdle < 0 || cfg.HandshakeTimeout < 0:
		return errors.New("router: keepalive min time, max connection idle and handshake timeout must not be negative")
	case cfg.StreamMaxInFlight < 1 || cfg.StreamMaxInFlight > maxStreamInFlight:
		return fmt.Errorf("router: stream max in flight %d: must be within [1, %d]", cfg.StreamMaxInFlight, maxStreamInFlight)
	case cfg.StreamIdleTimeout < 0:
		return errors.New("router: stream idle timeout must not be negative")
	}
	if n := maxNotifyBytes(cfg.MaxPayloadBytes); cfg.MaxRequestBytes < n {
		return fmt.Errorf("router: max request bytes %d: below %d, the largest valid Notify with a payload limit of %d",
			cfg.MaxRequestBytes, n, cfg.MaxPayloadBytes)
	}
	return nil
}

// maxNotifyBytes is the encoded size of the largest NotifyRequest that
// validation accepts with the given payload limit.
func maxNotifyBytes(maxPayload int) int {
	long := func(n int) string { return string(make([]byte, n)) }
	return proto.Size(&heraldv1.NotifyRequest{
		UserId: long(delivery.MaxUserIDBytes), Event: long(maxEventBytes), IdempotencyKey: long(maxIdempotencyKeyBytes),
		Data: make([]byte, maxPayload), Ttl: durationpb.New(maxTTL), AckDeadline: durationpb.New(maxAckDeadline),
		Push:         &heraldv1.PushOptions{Title: long(maxPushFieldBytes), Body: long(maxPushFieldBytes), CollapseKey: long(maxPushFieldBytes), Priority: heraldv1.Priority_PRIORITY_HIGH},
		DeliveryMode: heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH,
	})
}

// serverOptions are the gRPC server options that enforce cfg's limits,
// with codec as the server's codec. gRPC's transport refuses a message
// over twice MaxRequestBytes unread, RESOURCE_EXHAUSTED (it has no other
// code); codec refuses one over MaxRequestBytes as the caller's error.
func (cfg Config) serverOptions(codec *deferringCodec) []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.ForceServerCodecV2(codec),
		grpc.MaxHeaderListSize(uint32(cfg.MaxHeaderBytes)),
		grpc.MaxRecvMsgSize(transportMaxBytes(cfg.MaxRequestBytes)),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConn)),
		grpc.ConnectionTimeout(cfg.HandshakeTimeout),
		// Calls run on a pool of goroutines that keep their grown stacks,
		// instead of a new goroutine per call whose stack grows, by
		// copying, on every call. When every worker is busy (each waits
		// on Redis for its call), gRPC starts a goroutine for the call as
		// before, so the pool bounds nothing and delays nothing.
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: cfg.MaxConnIdle,
			// Ping a connection quiet for a minute; close it when the ping
			// is not answered within 20 s: a vanished peer frees its slot.
			Time: time.Minute, Timeout: 20 * time.Second,
		}),
	}, WindowServerOptions()...)
}

// The gRPC flow-control windows, the router's and its callers'
// (DialOptions): the bytes a peer may send on one call, and on one
// connection, before the other end has read them. A megabyte a call keeps
// a fast link busy with Notify traffic; the estimator they replace could
// grow a window to 16 MiB. gRPC widens a call's window for a message
// larger than it while the message is read.
const (
	streamWindowBytes = 1 << 20
	connWindowBytes   = 2 << 20
)

// WindowServerOptions are the router's fixed flow-control windows, for a
// server that should answer its callers as the router does (heraldbench's
// no-op baseline). Fixed windows turn off gRPC's bandwidth-delay
// estimator: with it on, the first DATA frame after a quiet spell starts a
// new sample, so at low rates every call cost the router a PING write and
// the read of its answer, each with a wake-up.
func WindowServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StaticStreamWindowSize(streamWindowBytes),
		grpc.StaticConnWindowSize(connWindowBytes),
	}
}

// streamWorkers is the size of the gRPC server's pool of call goroutines:
// enough for the calls in flight of a busy router, whose calls each wait
// about a Redis round trip.
func streamWorkers() uint32 { return uint32(32 * runtime.GOMAXPROCS(0)) }

// transportMaxBytes is the size over which gRPC's transport refuses a
// request without reading it: twice the request limit, so that a request
// somewhat over the limit is refused as the caller's error.
func transportMaxBytes(maxRequest int) int { return 2 * maxRequest }

// deferringCodec is the server's codec: gRPC's protobuf codec, except for
// the requests being decoded under deferDecodeErrors, for which a request
// over MaxRequestBytes, or one that does not decode, is recorded in pending
// and left empty instead of failing the call before it is authenticated.
type deferringCodec struct {
	encoding.CodecV2
	maxBytes int
	pending  sync.Map // request being decoded -> its decode error, or nil
}

func newDeferringCodec(maxBytes int) *deferringCodec {
	return &deferringCodec{CodecV2: encoding.GetCodecV2(encproto.Name), maxBytes: maxBytes}
}

func (c *deferringCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := c.pending.Load(v); !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	var err error
	if n := data.Len(); n > c.maxBytes {
		err = fmt.Errorf("is %d bytes, over the router's request size limit of %d", n, c.maxBytes)
	} else if err = c.CodecV2.Unmarshal(data, v); err != nil {
		err = fmt.Errorf("is not a valid protobuf message of the method's request type "+
			"(string fields such as user_id must be valid UTF-8): %w", err)
	}
	if err != nil {
		c.pending.Store(v, err)
		if m, ok := v.(proto.Message); ok {
			proto.Reset(m)
		}
		if r, ok := v.(*heraldv1.NotifyStreamRequest); ok {
			// Its error is answered with its sequence.
			r.Sequence = streamSequence(data.Materialize())
		}
	}
	return nil
}

// streamSequence is the sequence of an encoded NotifyStreamRequest that
// does not decode as a whole, read field by field as protobuf would (the
// last value wins); 0 when the encoding is broken before it.
func streamSequence(b []byte) uint64 {
	var seq uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return seq
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return seq
			}
			seq, b = v, b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return seq
		}
		b = b[n:]
	}
	return seq
}

// deferDecodeErrors returns desc with each unary method's request decoding
// wrapped: a request that cannot be decoded (over MaxRequestBytes, not
// valid protobuf, a string field that is not valid UTF-8) is passed to the
// interceptors empty, and refused INVALID_ARGUMENT once they have let it
// through. So an unauthenticated caller is told UNAUTHENTICATED whatever it
// sent, and a caller's malformed request is its error, not the router's
// (gRPC answers INTERNAL, or RESOURCE_EXHAUSTED, the rate-limit code).
func (c *deferringCodec) deferDecodeErrors(desc grpc.ServiceDesc) *grpc.ServiceDesc {
	methods := make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		h := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			var decErr error
			deferring := func(v any) error {
				c.pending.Store(v, nil)
				err := dec(v)
				if recorded, _ := c.pending.LoadAndDelete(v); recorded != nil {
					decErr = recorded.(error)
				}
				return err
			}
			wrapped := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				inner := func(ctx context.Context, req any) (any, error) {
					if decErr != nil {
						return nil, invalidArgument([]violation{{"request", decErr.Error()}})
					}
					return handler(ctx, req)
				}
				if icpt == nil {
					return inner(ctx, req)
				}
				return icpt(ctx, req, info, inner)
			}
			return h(srv, ctx, deferring, wrapped)
		}
		methods[i] = m
	}
	desc.Methods = methods
	streams := make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		sd.Handler = func(srv any, ss grpc.ServerStream) error {
			ds := &decodingStream{ServerStream: ss, codec: c}
			ds.ctx = context.WithValue(ss.Context(), decodingKey{}, ds)
			return h(srv, ds)
		}
		streams[i] = sd
	}
	desc.Streams = streams
	return &desc
}

// decodingKey is the context key of a stream's decodingStream.
type decodingKey struct{}

// decodingStream is deferDecodeErrors for a stream's messages: a message
// that cannot be decoded is received empty (a NotifyStreamRequest keeps its
// sequence), and the handler takes its error with decodeError, to answer
// it and read on.
type decodingStream struct {
	grpc.ServerStream
	ctx   context.Context
	codec *deferringCodec
	err   error // the last message's decode error
}

func (s *decodingStream) Context() context.Context { return s.ctx }

func (s *decodingStream) RecvMsg(m any) error {
	s.codec.pending.Store(m, nil)
	err := s.ServerStream.RecvMsg(m)
	recorded, _ := s.codec.pending.LoadAndDelete(m)
	s.err, _ = recorded.(error)
	return err
}

// decodeError is the decode error of the message last received on ctx's
// stream, or nil. Only the goroutine that receives may call it.
func decodeError(ctx context.Context) error {
	if s, ok := ctx.Value(decodingKey{}).(*decodingStream); ok {
		return s.err
	}
	return nil
}
