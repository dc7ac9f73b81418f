package sseedge

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// decodeAll reads every event from wire.
func decodeAll(t testing.TB, wire []byte) []Event {
	t.Helper()
	d := NewDecoder(bytes.NewReader(wire))
	var out []Event
	for {
		ev, err := d.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("decode %q: %v", wire, err)
		}
		out = append(out, ev)
	}
}

func TestAppendEventWire(t *testing.T) {
	t.Parallel()
	cases := []struct {
		id, event, data string
		want            string
	}{
		{"1", "update", "hello", "id: 1\nevent: update\ndata: hello\n\n"},
		{"", "", "", "data: \n\n"},
		{"2", "", "a\nb", "id: 2\ndata: a\ndata: b\n\n"},
		{"3", "", "a\r\nb\rc\n", "id: 3\ndata: a\ndata: b\ndata: c\ndata: \n\n"},
		{"4", "", " leading space", "id: 4\ndata:  leading space\n\n"},
		{"5\nevent: evil", "x\r\ndata: injected", "d", "id: 5event: evil\nevent: xdata: injected\ndata: d\n\n"},
		{"6\x00", "", "d", "id: 6\ndata: d\n\n"},
	}
	for _, tc := range cases {
		got := string(appendEvent(nil, tc.id, tc.event, tc.data))
		if got != tc.want {
			t.Errorf("appendEvent(%q, %q, %q) = %q, want %q", tc.id, tc.event, tc.data, got, tc.want)
		}
	}
}

// TestInjection checks that no newline or CR in data, event or id can create
// a field or an event on the wire: exactly one event comes out, with the
// data intact (line breaks normalised to LF) and the id and event as sent
// minus their line breaks.
func TestInjection(t *testing.T) {
	t.Parallel()
	hostile := []string{
		"\n\nid: 999\nevent: admin\ndata: pwned\n\n",
		"\r\rretry: 1\r\r",
		"\r\n\r\ndata: x\r\n\r\n",
		"ok\n\n\n",
		": comment\n\ndata: y",
	}
	for _, h := range hostile {
		wire := appendEvent(nil, "id-"+h, "ev-"+h, "data-"+h)
		evs := decodeAll(t, wire)
		if len(evs) != 1 {
			t.Fatalf("%q framed as %d events: %q", h, len(evs), wire)
		}
		ev := evs[0]
		if ev.ID != stripLineBreaks("id-"+h) || ev.Event != stripLineBreaks("ev-"+h) {
			t.Errorf("id/event %q/%q, want %q/%q", ev.ID, ev.Event, stripLineBreaks("id-"+h), stripLineBreaks("ev-"+h))
		}
		if want := normaliseNewlines("data-" + h); ev.Data != want {
			t.Errorf("data %q, want %q", ev.Data, want)
		}
		if ev.Retry != 0 {
			t.Errorf("retry injected: %v", ev.Retry)
		}
	}
}

func normaliseNewlines(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "\n")
}

func TestDecoderSpecCases(t *testing.T) {
	t.Parallel()
	wire := "\uFEFF: comment\nretry: 1500\n\n" +
		"data\n\n" + // a field with no colon: data is ""
		"event: a\nid: 7\ndata:x\n\n" + // no space after colon
		"id: bad\x00\ndata: keeps id 7\n\n" + // an id with NUL is ignored
		"event: dropped\n\n" + // no data: no event, and the type resets
		"data: y\r\n\r\n" +
		"retry: 12x\ndata: z\n\n" // a bad retry is ignored
	got := decodeAll(t, []byte(wire))
	want := []Event{
		{Retry: 1500 * time.Millisecond},
		{Data: ""},
		{ID: "7", Event: "a", Data: "x"},
		{ID: "7", Data: "keeps id 7"},
		{ID: "7", Data: "y"},
		{ID: "7", Data: "z"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := NewDecoder(strings.NewReader("data: cut off")).Next(); err != io.ErrUnexpectedEOF {
		t.Errorf("cut-off event: err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzFrame(f *testing.F) {
	f.Add("1", "update", "hello")
	f.Add("", "", "")
	f.Add("a\nb", "c\rd", "e\r\nf\n\ng")
	f.Add("\x00", "\uFEFF", "data: x\n\nid: 2")
	f.Fuzz(func(t *testing.T, id, event, data string) {
		wire := appendEvent(nil, id, event, data)
		evs := decodeAll(t, wire)
		if len(evs) != 1 {
			t.Fatalf("(%q, %q, %q) framed as %d events: %q", id, event, data, len(evs), wire)
		}
		if got, want := evs[0].Data, normaliseNewlines(data); got != want {
			t.Fatalf("data = %q, want %q", got, want)
		}
		if got, want := evs[0].Event, stripLineBreaks(event); got != want {
			t.Fatalf("event = %q, want %q", got, want)
		}
		if got, want := evs[0].ID, stripLineBreaks(id); got != want {
			t.Fatalf("id = %q, want %q", got, want)
		}
	})
}

func FuzzDecoder(f *testing.F) {
	f.Add([]byte("id: 1\nevent: x\ndata: y\n\n"))
	f.Add([]byte("\uFEFFretry: 10\r\n\r\ndata\r\rdata: z\n"))
	f.Fuzz(func(t *testing.T, wire []byte) {
		d := NewDecoder(bytes.NewReader(wire))
		for range len(wire) + 1 {
			if _, err := d.Next(); err != nil {
				return
			}
		}
		t.Fatalf("decoder returned more events than input bytes for %q", wire)
	})
}
