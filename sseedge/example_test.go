package sseedge_test

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/herald-push/herald/sseedge"
)

// A client reads an edge's stream with a Decoder, as a browser's
// EventSource would, and keeps LastEventID to resume from.
func ExampleDecoder() {
	stream := strings.NewReader("retry: 2000\n" +
		": connected c1\n\n" +
		"id: 1795662248194000\nevent: message\ndata: {\"text\":\"hi\"}\n\n")
	d := sseedge.NewDecoder(stream)
	for {
		ev, err := d.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		if ev.Retry > 0 {
			fmt.Println("retry", ev.Retry)
			continue
		}
		fmt.Println(ev.Event, ev.Data)
	}
	fmt.Println("resume from", d.LastEventID())
	// Output:
	// retry 2s
	// message {"text":"hi"}
	// resume from 1795662248194000
}
