package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// rawCodec sends a request's bytes as they are, so that a test can send
// what no protobuf library would encode, and decodes responses as protobuf.
type rawCodec struct{}

// rawRequest is an encoded request message.
type rawRequest []byte

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(rawRequest))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (rawCodec) Name() string { return "proto" }

// invoke calls method with the raw request req.
func (r *authRouter) invoke(ctx context.Context, tb testing.TB, method string, req rawRequest, resp proto.Message) error {
	tb.Helper()
	conn := testenv.GRPCClient(tb, r.addr)
	return conn.Invoke(ctx, "/herald.v1.RouterService/"+method, req, resp, grpc.ForceCodecV2(rawCodec{}))
}

// retryInfo is err's RetryInfo detail, or nil.
func retryInfo(err error) *errdetails.RetryInfo {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	return nil
}

// TestDecodeErrorsAfterAuthentication: a request gRPC cannot decode (a
// user_id that is not UTF-8, bytes that are not protobuf, a message over
// the size limit) is refused UNAUTHENTICATED to a caller without
// credentials, and INVALID_ARGUMENT, naming the request, to one with them;
// never INTERNAL, nor RESOURCE_EXHAUSTED, the rate-limit code.
func TestDecodeErrorsAfterAuthentication(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"*"}, Rate: 1000}})
	ps := r.online(t, "alice")

	badUser := protowire.AppendTag(nil, 1, protowire.BytesType)
	badUser = protowire.AppendBytes(badUser, []byte("alice\xff\xfe"))
	notProto := rawRequest{0x0a, 0xff, 0xff, 0xff, 0xff, 0xff}
	big, err := proto.Marshal(&heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{
		{UserId: "alice", Data: []byte(strings.Repeat("x", router.DefaultMaxRequestBytes))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	batchBadUser := protowire.AppendTag(nil, 1, protowire.BytesType)
	batchBadUser = protowire.AppendBytes(batchBadUser, badUser)
	cases := []struct {
		name, method string
		req          rawRequest
		want         string
	}{
		{"user_id not UTF-8", "Notify", badUser, "UTF-8"},
		{"not protobuf", "Notify", notProto, "not a valid protobuf"},
		{"batch item's user_id not UTF-8", "NotifyBatch", batchBadUser, "UTF-8"},
		{"over the request size limit", "NotifyBatch", big, "over the router's request size limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var resp heraldv1.NotifyResponse
			var batch heraldv1.NotifyBatchResponse
			out := proto.Message(&resp)
			if tc.method == "NotifyBatch" {
				out = &batch
			}
			if err := r.invoke(context.Background(), t, tc.method, tc.req, out); status.Code(err) != codes.Unauthenticated {
				t.Errorf("without credentials: %v, want Unauthenticated", err)
			}
			err := r.invoke(withKey("k1"), t, tc.method, tc.req, out)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.want) || retryInfo(err) != nil {
				t.Errorf("with credentials: %v, want InvalidArgument saying %q, without RetryInfo", err, tc.want)
			}
		})
	}
	if n := r.refused(t, "unauthenticated"); n != float64(len(cases)) {
		t.Errorf("auth_refused_total{unauthenticated} = %v, want %d", n, len(cases))
	}
	// Nothing reached the user.
	if msg, err := ps.ReceiveTimeout(context.Background(), 100*time.Millisecond); err == nil {
		t.Errorf("user received %v", msg)
	}
}

// TestNotifyBatchOverCapIsCallersError: a batch over the item cap is the
// caller's error, INVALID_ARGUMENT without RetryInfo, not the rate-limit
// code; a batch at the cap is routed.
func TestNotifyBatchOverCapIsCallersError(t *testing.T) {
	r := newAuthRouter(t, []router.CallerConfig{{Name: "orders", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}})
	over := &heraldv1.NotifyBatchRequest{}
	for range 1001 {
		over.Notifications = append(over.Notifications, &heraldv1.NotifyRequest{UserId: "bob", Data: []byte("x")})
	}
	_, err := r.client.NotifyBatch(withKey("k1"), over)
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "over the limit of 1000") || retryInfo(err) != nil {
		t.Fatalf("batch of 1001: %v, want InvalidArgument naming the cap of 1000, without RetryInfo", err)
	}
	resp, err := r.client.NotifyBatch(withKey("k1"), &heraldv1.NotifyBatchRequest{Notifications: over.Notifications[:1000]})
	if err != nil || len(resp.GetResults()) != 1000 || resp.GetResults()[999].GetCode() != 0 {
		t.Fatalf("batch of 1000: %v, %d results, want all routed", err, len(resp.GetResults()))
	}
}

// TestConfigLimits: the limits default, and a request limit that cannot
// hold the largest valid Notify is refused at start.
func TestConfigLimits(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 0)
	if _, err := router.New(router.Config{MaxRequestBytes: 64 << 10}, router.Deps{Publisher: pub}); err == nil ||
		!strings.Contains(err.Error(), "largest valid Notify") {
		t.Errorf("64 KiB requests with 64 KiB payloads: %v, want refused", err)
	}
	if _, err := router.New(router.Config{MaxPayloadBytes: 1024, MaxRequestBytes: 64 << 10}, router.Deps{Publisher: pub}); err != nil {
		t.Errorf("64 KiB requests with 1 KiB payloads: %v", err)
	}
	if _, err := router.New(router.Config{MaxHeaderBytes: 100}, router.Deps{Publisher: pub}); err == nil {
		t.Error("100-byte metadata limit accepted")
	}
}
