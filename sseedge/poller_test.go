package sseedge_test

import (
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/sseedge"
)

// What a client sends after its request is read and dropped, however much
// it is: the edge does not leave it to fill the socket, which would hold
// the client's writes and megabytes of kernel buffers. The stream goes on,
// and its hang-up is still seen.
func TestClientFloodIsDropped(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	st := openRaw(t, e, tokenFor(t, "flood", time.Hour))
	junk := []byte(strings.Repeat("x", 16<<20))
	// Far more than the edge's receive buffer can hold: the write ends only
	// if the edge reads it all. The deadline is a guard against a hang.
	_ = st.conn.SetWriteDeadline(time.Now().Add(time.Minute))
	if n, err := st.conn.Write(junk); err != nil {
		t.Fatalf("wrote %d of %d bytes: %v", n, len(junk), err)
	}
	id := e.publish(t, "flood", []byte("after the flood"))
	if ev := readUntil(t, st.dec, id); ev.Data != "after the flood" {
		t.Fatalf("data %q", ev.Data)
	}
	st.conn.Close()
	waitClosed(t, e, sseedge.CloseClientClosed, 1)
}
