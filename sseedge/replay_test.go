package sseedge_test

import (
	"cmp"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// A replay larger than the queue is written a page at a time (QueueSize 4:
// a page holds about one event per stream), yet the client gets every
// missed event of its user's stream and its topics once, in event id
// order, each with a cursor that holds it, and then the live events. Over
// HTTP/1.1 (served by the writers) and HTTP/2 (by the handler).
func TestPagedReplayOrder(t *testing.T) {
	t.Parallel()
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			e := newTestEdge(t, sseedge.Config{QueueSize: 4})
			client := http.DefaultClient
			if proto == "h2c" {
				protocols := new(http.Protocols)
				protocols.SetUnencryptedHTTP2(true)
				client = &http.Client{Transport: &http.Transport{Protocols: protocols, TLSClientConfig: &tls.Config{}}}
			}
			const user = "pager"
			names := []string{"", "alpha", "beta"}
			// Another stream of the user's, which does not read, keeps the
			// user online while history fills.
			tok, _ := sseedge.IssueToken(secret, user, time.Hour, time.Now(), "alpha", "beta")
			e.open(t, tok)

			type sent struct {
				stream int
				id     uint64
				data   string
			}
			var want []sent
			// The client's cursor from before the events: the start of
			// each stream, as the edge gave it out.
			cursor := readStream(t, e, tok, "&topic=alpha&topic=beta", "", 0, nil).cursor
			for n := range 30 {
				i := (n * 7) % 3
				data := "e" + strconv.Itoa(n)
				now := time.Now()
				env := &heraldv1.Envelope{Id: delivery.NewID(now), Data: []byte(data), AcceptedAt: timestamppb.New(now)}
				var (
					res delivery.Result
					err error
				)
				if i == 0 {
					env.UserId = user
					res, err = e.pub.Publish(context.Background(), env, "")
				} else {
					env.Topic = names[i]
					res, err = e.pub.Broadcast(context.Background(), env)
				}
				if err != nil {
					t.Fatal(err)
				}
				id, _ := strconv.ParseUint(res.EventID, 10, 64)
				want = append(want, sent{i, id, data})
			}
			slices.SortStableFunc(want, func(a, b sent) int {
				return cmp.Or(cmp.Compare(a.id, b.id), cmp.Compare(a.stream, b.stream))
			})

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok+"&topic=alpha&topic=beta", nil)
			req.Header.Set("Last-Event-ID", cursor)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if proto == "h2c" && resp.ProtoMajor != 2 {
				t.Fatalf("served over %s", resp.Proto)
			}
			dec := sseedge.NewDecoder(resp.Body)
			var got []string
			for len(got) < len(want) {
				ev, err := dec.Next()
				if err != nil {
					t.Fatalf("stream ended after %v: %v", got, err)
				}
				if ev.Retry > 0 {
					continue
				}
				if ev.Data == "" || ev.Event == sseedge.ResetEvent {
					t.Fatalf("unexpected event %+v after %v", ev, got)
				}
				w := want[len(got)]
				got = append(got, ev.Data)
				if ev.Data != w.data {
					t.Fatalf("replayed %v, want %v", got, w.data)
				}
				// The cursor holds the event just written.
				pos := strings.Split(ev.ID, ";")
				if w.stream > 0 {
					pos[w.stream] = strings.TrimPrefix(pos[w.stream], names[w.stream]+"=")
				}
				if pos[w.stream] != strconv.FormatUint(w.id, 10) {
					t.Fatalf("event %s has cursor %s, want position %d in stream %d", ev.Data, ev.ID, w.id, w.stream)
				}
			}
			// Then live, once.
			id := e.publish(t, user, []byte("live"))
			ev, err := dec.Next()
			if err != nil || ev.Data != "live" || !strings.HasPrefix(ev.ID, id+";") {
				t.Fatalf("after the replay: %+v, %v; want the live event %s", ev, err, id)
			}
			if n := e.metric("herald_sse_history_events_replayed_total"); n != float64(len(want)) {
				t.Errorf("history_events_replayed_total %v, want %d", n, len(want))
			}
		})
	}
}

// Past the edge's queued bytes budget, the stream holding the most is
// closed as slow_consumer (long before its queue or write timeout would
// close it), and the others go on.
func TestQueuedBytesBudget(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{QueueSize: 4096, WriteTimeout: 30 * time.Second, MaxQueuedBytes: 1 << 20})
	stalledClient(t, e, "heavy")
	light := sseedge.NewDecoder(e.open(t, tokenFor(t, "light", time.Hour)).Body)
	big := []byte(strings.Repeat("z", 60<<10))
	sendUntilClosed(t, e, "heavy", big, 0)
	waitClosed(t, e, sseedge.CloseSlowConsumer, 1)
	if n := e.metric("herald_sse_queue_budget_closes_total"); n != 1 {
		t.Errorf("queue_budget_closes_total = %v, want 1", n)
	}
	if n := e.closed(sseedge.CloseWriteTimeout); n != 0 {
		t.Errorf("write_timeout = %v, want 0", n)
	}
	id := e.publish(t, "light", []byte("still here"))
	readUntil(t, light, id)
	if n := e.metric("herald_sse_queued_bytes"); n != 0 {
		t.Errorf("queued_bytes = %v once the heavy stream is gone, want 0", n)
	}
}

// stalledClient opens a stream for user that never reads, with a small
// receive buffer, so that the edge's writes block soon.
func stalledClient(t *testing.T, e *testEdge, user string) {
	t.Helper()
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	stalled := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tokenFor(t, user, time.Hour), nil)
	resp, err := stalled.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close(); stalled.CloseIdleConnections() })
}
