package sseedge

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Benchmarks of the SSE framing, the per-event work of every delivery:
//
//	go test -run '^$' -bench 'Frame' -benchmem ./sseedge/
//
// Body is an event's body, framed once per published event (event: and
// data: fields); Delivery is what each stream adds to it when the event is
// written: its id: field (the stream's cursor over its user stream and a
// topic) and the HTTP/1.1 chunk around it.

func BenchmarkFrameBody(b *testing.B) {
	data := `{"t":1764400000000000000,"n":12345,"changed":["holdings","cash"]}`
	var buf []byte
	for b.Loop() {
		buf = appendBody(buf[:0], "account.changed", data)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkFrameMultilineBody(b *testing.B) {
	data := strings.Repeat("a line of the message\n", 8)
	var buf []byte
	for b.Loop() {
		buf = appendBody(buf[:0], "chat", data)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkFrameDelivery(b *testing.B) {
	body := appendBody(nil, "account.changed", `{"t":1764400000000000000,"n":12345}`)
	names := []string{"", "news"}
	pos := []uint64{1764400000000000123, 1764400000000000456}
	buf := make([]byte, chunkRoom, 256)
	for b.Loop() {
		buf = buf[:chunkRoom]
		buf = append(buf, "id: "...)
		buf = appendCursor(buf, names, pos)
		buf = append(buf, '\n')
		buf = append(buf, body...)
		_ = chunk(buf)
		pos[1]++
	}
}

// BenchmarkDecode is the edge's work on each message it reads from Redis
// before any stream sees it: the envelope's protobuf decode and the framing
// of its body (Server.decode).
//
//	go test -run '^$' -bench 'Decode' -benchmem ./sseedge/
func BenchmarkDecode(b *testing.B) {
	now := time.Now()
	env := &heraldv1.Envelope{
		Id: delivery.NewID(now), UserId: "u:1234567", Event: "account.changed", EventId: "1764400000000000123",
		CorrelationId: "c-42", Data: []byte(`{"t":1764400000000000000,"n":12345,"changed":["holdings","cash"]}`),
		AcceptedAt: timestamppb.New(now),
	}
	payload, err := delivery.Marshal(env)
	if err != nil {
		b.Fatal(err)
	}
	s := &Server{now: time.Now}
	for b.Loop() {
		if s.decode("herald:u:1234567", payload) == nil {
			b.Fatal("dropped")
		}
	}
}
