package sseedge

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
	"time"
)

// Decoder reads Server-Sent Events from a stream the way a browser's
// EventSource does (the WHATWG HTML standard's parsing rules). Go clients,
// load tools and tests use it to read an edge's stream.
type Decoder struct {
	r       *bufio.Reader
	started bool
	lastID  string
}

// NewDecoder returns a Decoder that reads from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: bufio.NewReaderSize(r, 4096)}
}

// LastEventID is the last id: field seen, which a reconnecting client sends
// as Last-Event-ID.
func (d *Decoder) LastEventID() string { return d.lastID }

// readLine returns the next line without its terminator (CRLF, LF or CR).
func (d *Decoder) readLine() (string, error) {
	var line []byte
	for {
		b, err := d.r.ReadByte()
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				// A final line with no terminator is discarded, as the
				// standard says: the stream ended mid-event.
				return "", io.ErrUnexpectedEOF
			}
			return "", err
		}
		switch b {
		case '\n':
			return string(line), nil
		case '\r':
			if next, err := d.r.Peek(1); err == nil && next[0] == '\n' {
				_, _ = d.r.ReadByte()
			}
			return string(line), nil
		}
		line = append(line, b)
	}
}

// Next returns the next dispatched event. A retry: field alone is returned
// as an Event with only Retry set. Comments are skipped. At the end of the
// stream it returns io.EOF, or io.ErrUnexpectedEOF when an event was cut off.
func (d *Decoder) Next() (Event, error) {
	var (
		ev      Event
		data    strings.Builder
		hasData bool
	)
	for {
		line, err := d.readLine()
		if err != nil {
			if err == io.EOF && (hasData || ev.Event != "") {
				err = io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		if !d.started {
			d.started = true
			line = strings.TrimPrefix(line, "\uFEFF")
		}
		if line == "" {
			if !hasData {
				if ev.Retry > 0 {
					return Event{Retry: ev.Retry}, nil
				}
				ev.Event = ""
				continue
			}
			ev.Data = strings.TrimSuffix(data.String(), "\n")
			ev.ID = d.lastID
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch field {
		case "event":
			ev.Event = value
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				d.lastID = value
			}
		case "retry":
			if ms, err := strconv.ParseUint(value, 10, 63); err == nil && isDigits(value) {
				ev.Retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

func isDigits(s string) bool {
	return s != "" && len(bytes.Trim([]byte(s), "0123456789")) == 0
}
