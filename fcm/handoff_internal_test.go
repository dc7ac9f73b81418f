package fcm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// FuzzAcceptedAt checks acceptedAt against a full decode: for every input
// that proto.Unmarshal takes as an Envelope, it finds the same accepted_at,
// or none when there is none.
func FuzzAcceptedAt(f *testing.F) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 123456789, time.UTC)
	for _, env := range []*heraldv1.Envelope{
		{},
		{Id: "n1", UserId: "u1", Data: []byte("{}")},
		{Id: "n1", UserId: "u1", Event: "e", Data: []byte("payload"), AcceptedAt: timestamppb.New(at),
			ExpiresAt: timestamppb.New(at.Add(time.Hour)), Push: &heraldv1.PushOptions{Title: "t"}, EventId: "17", Traced: true},
		{AcceptedAt: &timestamppb.Timestamp{}},
		{AcceptedAt: &timestamppb.Timestamp{Seconds: -5, Nanos: 7}},
	} {
		b, err := proto.Marshal(env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// accepted_at twice: proto merges the two.
	twice := append(must(proto.Marshal(&heraldv1.Envelope{AcceptedAt: &timestamppb.Timestamp{Seconds: 5}})),
		must(proto.Marshal(&heraldv1.Envelope{AcceptedAt: &timestamppb.Timestamp{Nanos: 3}}))...)
	f.Add(twice)
	f.Fuzz(func(t *testing.T, b []byte) {
		var env heraldv1.Envelope
		if proto.Unmarshal(b, &env) != nil {
			return
		}
		got, ok := acceptedAt(b)
		if want := env.GetAcceptedAt(); want == nil {
			if ok {
				t.Fatalf("acceptedAt = %v, true; the envelope has none", got)
			}
		} else if !ok || !got.Equal(want.AsTime()) {
			t.Fatalf("acceptedAt = %v, %v; want %v", got, ok, want.AsTime())
		}
	})
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
