package main

import (
	"testing"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// FuzzDeadLetter: decoding an arbitrary dead-letter record never panics;
// a record that decodes has an envelope with an id, and one that does not
// is reported as undecodable, never dropped.
func FuzzDeadLetter(f *testing.F) {
	dl := &heraldv1.DeadLetter{
		Envelope:  &heraldv1.Envelope{Id: "01M8B0NDX1AXY4XAG8SXZD1CC6", UserId: "kim"},
		ErrorCode: "UNREGISTERED", Attempts: 2, DeadLetteredAt: timestamppb.Now(),
	}
	b, err := proto.Marshal(dl)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, "UNREGISTERED")
	f.Add([]byte("not protobuf"), "UNDECODABLE")
	f.Add([]byte{}, "")
	f.Fuzz(func(t *testing.T, value []byte, code string) {
		d := decodeDeadLetter(kafka.Message{Value: value, Headers: []kafka.Header{{Key: "herald-error-code", Value: []byte(code)}}})
		if d.Err == nil && d.DL.GetEnvelope().GetId() == "" {
			t.Fatal("a dead letter without a notification id was taken as decoded")
		}
		if d.Err != nil && d.Code != code {
			t.Fatalf("an undecodable record lost its header code: %q, want %q", d.Code, code)
		}
	})
}
