package delivery_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// fillEnvelope is a typical notification: an order fill with a 120-byte
// JSON payload.
func fillEnvelope() *heraldv1.Envelope {
	now := time.Now()
	return &heraldv1.Envelope{
		Id: delivery.NewID(now), UserId: "user-4711", Event: "order.filled",
		Data:       []byte(`{"order":"O-88213","symbol":"ACME","side":"buy","qty":120,"price":41.27,"filled_at":"2026-11-29T10:00:00Z"}`),
		AcceptedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		CorrelationId: "req-5f2c", EventId: "1042",
	}
}

// The envelope is encoded once per notification by the router and decoded
// once per message by each edge that receives it.
func BenchmarkEnvelopeMarshal(b *testing.B) {
	env := fillEnvelope()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := delivery.Marshal(env); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvelopeUnmarshal(b *testing.B) {
	wire, err := delivery.Marshal(fillEnvelope())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := delivery.Unmarshal(wire); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewID(b *testing.B) {
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = delivery.NewID(now)
	}
}
