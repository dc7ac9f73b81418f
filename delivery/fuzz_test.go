package delivery_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// FuzzEnvelope: decoding arbitrary bytes as an envelope never panics, and
// whatever decodes encodes and decodes again to the same envelope.
func FuzzEnvelope(f *testing.F) {
	now := time.Unix(1795660000, 0)
	for _, env := range []*heraldv1.Envelope{
		{},
		{Id: delivery.NewID(now), UserId: "alice", Event: "update", Data: []byte(`{"n":1}`),
			AcceptedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)), EventId: "1795660000000000",
			Push: &heraldv1.PushOptions{Title: "t", Priority: heraldv1.Priority_PRIORITY_HIGH}, CorrelationId: "c"},
		{Topic: "chat.1", Data: []byte("hi\nthere")},
	} {
		b, err := delivery.Marshal(env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := delivery.Unmarshal(b)
		if err != nil {
			return
		}
		again, err := delivery.Marshal(env)
		if err != nil {
			t.Fatalf("an envelope that decoded does not encode: %v", err)
		}
		back, err := delivery.Unmarshal(again)
		if err != nil || !proto.Equal(env, back) {
			t.Fatalf("round trip changed the envelope: %v -> %v (%v)", env, back, err)
		}
	})
}
