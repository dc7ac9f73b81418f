package sseedge

import (
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// Event is one Server-Sent Event as the client sees it.
type Event struct {
	ID    string // the id: field; empty for none
	Event string // the event: field; empty means "message"
	Data  string // the data, lines joined with "\n"
	// Retry is the reconnection time from a retry: field, or 0.
	Retry time.Duration
}

// stripLineBreaks removes CR and LF, which would end an SSE field, and NUL,
// which makes browsers ignore an id field. The router refuses such input; the
// framing strips it again so that nothing that reaches an edge can inject a
// field or an event.
func stripLineBreaks(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return -1
		}
		return r
	}, s)
}

// appendEvent appends the wire form of one event to b, as the WHATWG HTML
// standard's event-stream format defines it: an id: and an event: field when
// set, one data: field per line of data (lines end at CRLF, LF or CR), and a
// blank line that dispatches the event.
func appendEvent(b []byte, id, event, data string) []byte {
	return appendBody(appendID(b, id), event, data)
}

// appendID appends an id: field, if id is not empty.
func appendID(b []byte, id string) []byte {
	if id = stripLineBreaks(id); id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	return b
}

// appendBody appends the event: and data: fields and the blank line that
// dispatch an event. Every event carries at least one data: field, because a
// client drops an event whose data is empty.
func appendBody(b []byte, event, data string) []byte {
	if event = stripLineBreaks(event); event != "" {
		b = append(b, "event: "...)
		b = append(b, event...)
		b = append(b, '\n')
	}
	for {
		i := strings.IndexAny(data, "\r\n")
		line := data
		if i >= 0 {
			line = data[:i]
		}
		b = append(b, "data: "...)
		b = append(b, line...)
		b = append(b, '\n')
		if i < 0 {
			break
		}
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	return append(b, '\n')
}

// bodySize is room enough for appendBody's fields for an event's name and
// data: the data's bytes, and a "data: " and a newline for each of its
// lines, counting CRLF as two.
func bodySize(event string, data []byte) int {
	lines := 1
	for _, c := range data {
		if c == '\n' || c == '\r' {
			lines++
		}
	}
	return len("event: \n") + len(event) + len(data) + lines*len("data: \n") + 1
}

// bytesAsString returns b as a string without copying it. The caller must
// not change b while the string is in use, nor keep the string.
func bytesAsString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// stringAsBytes returns s as a byte slice without copying it. The bytes
// must not be changed.
func stringAsBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// appendRetry appends a retry: field that sets the client's reconnection
// delay. It dispatches no event.
func appendRetry(b []byte, d time.Duration) []byte {
	b = append(b, "retry: "...)
	b = strconv.AppendInt(b, d.Milliseconds(), 10)
	return append(b, "\n\n"...)
}

// appendComment appends a comment line, which clients ignore; it keeps
// proxies and load balancers from closing an idle stream.
func appendComment(b []byte, text string) []byte {
	b = append(b, ": "...)
	b = append(b, stripLineBreaks(text)...)
	return append(b, "\n\n"...)
}
