package router

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// FuzzStreamSequence: streamSequence never panics, and finds the sequence
// of a NotifyStreamRequest whatever notification bytes follow it, as
// protobuf decodes it when they are valid.
func FuzzStreamSequence(f *testing.F) {
	f.Add(uint64(41), []byte("alice\xff"), []byte{})
	f.Add(uint64(0), []byte{}, []byte{0x08, 0x07})
	f.Add(uint64(1<<63), []byte{0x0a, 0xff}, []byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, seq uint64, notification, tail []byte) {
		b := protowire.AppendTag(nil, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, seq)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, notification)
		if got := streamSequence(b); got != seq {
			t.Fatalf("streamSequence = %d, want %d", got, seq)
		}
		b = append(b, tail...)
		got := streamSequence(b) // must not panic
		var m heraldv1.NotifyStreamRequest
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &m); err == nil && got != m.GetSequence() {
			t.Fatalf("streamSequence = %d, protobuf decodes %d", got, m.GetSequence())
		}
	})
}
