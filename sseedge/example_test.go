package sseedge_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

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

// An application's auth service issues a user a token for the edge: here
// for user u1, valid for 15 minutes, reading the user's own stream and the
// topics under news. The payload, the token's middle part, carries those
// claims; the edge checks the signature with the same secret.
func ExampleIssueToken() {
	secret := []byte("a secret of 32 bytes or more....")
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	tok, err := sseedge.IssueToken(secret, "u1", 15*time.Minute, now, "news.*")
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(len(parts), "parts")
	fmt.Println(string(payload))
	// Output:
	// 3 parts
	// {"exp":1767367145,"iat":1767366245,"sub":"u1","topics":["news.*"]}
}
