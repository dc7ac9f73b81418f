package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/history"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// replayRSSBound is how much the edge's resident memory may grow while
// replayClients clients that never read each replay the longest history a
// stream allows (docs/security.md). A replay is paged: each stream holds at
// most QueueSize events (64 × 16 KiB = 1 MiB) of it, whatever the history.
const (
	replayClients  = 8
	replayTopics   = 16
	replayEvents   = 100 // the history's default length
	replayPayload  = 16 << 10
	replayRSSBound = 64 << 20
)

// Hostile replays (issue 15, item 1): eight clients that never read, each
// reconnecting with a Last-Event-ID just below the oldest event of 16
// topics holding 100 events of 16 KiB each (26 MB of history per stream),
// keep the growth of a real sseedge process's RSS under replayRSSBound.
//
//	go test -count=1 -v -run TestHostileReplayRSS ./cmd/sseedge/
func TestHostileReplayRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads the edge's RSS from /proc")
	}
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 30*time.Second)

	// The history: 16 topics × 100 events × 16 KiB.
	ctx := context.Background()
	payload := []byte(strings.Repeat("x", replayPayload))
	topics := make([]string, replayTopics)
	for i := range topics {
		topics[i] = "stock.t" + strconv.Itoa(i)
	}
	readBefore(t, rdb, prefix, topics)
	first := make([]uint64, replayTopics)
	var wg sync.WaitGroup
	errs := make(chan error, replayTopics)
	for i := range topics {
		wg.Go(func() {
			for n := range replayEvents {
				now := time.Now()
				env := &heraldv1.Envelope{Id: delivery.NewID(now), Topic: topics[i], Data: payload, AcceptedAt: timestamppb.New(now)}
				res, err := pub.Broadcast(ctx, env)
				if err != nil {
					errs <- err
					return
				}
				if n == 0 {
					first[i], _ = strconv.ParseUint(res.EventID, 10, 64)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Just below the oldest event of each topic: the whole history.
	cursor := strconv.FormatUint(first[0]-1, 10)
	for i, topic := range topics {
		cursor += ";" + topic + "=" + strconv.FormatUint(first[i]-1, 10)
	}

	edge := newTestEdgeProcess(t, prefix)
	before := edge.rss(t)
	var conns []net.Conn
	for i := range replayClients {
		tok, err := sseedge.IssueToken(edgeSecret, "hostile"+strconv.Itoa(i), time.Hour, time.Now(), "stock.*")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, edge.openStalled(t, tok, topics, cursor))
	}
	// The replays run until each client's socket is full: watch the RSS
	// while the streams open and for 3 s after.
	var peak int64
	opened := time.Time{}
	for deadline := time.Now().Add(25 * time.Second); time.Now().Before(deadline); {
		peak = max(peak, edge.rss(t))
		if opened.IsZero() && edge.metric(t, "herald_sse_connections_open") == replayClients {
			opened = time.Now()
		}
		if !opened.IsZero() && time.Since(opened) > 3*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	replayed := edge.metric(t, "herald_sse_history_events_replayed_total")
	t.Logf("edge RSS %d MiB before, %d MiB at the peak: growth %d MiB (bound %d MiB); %v events replayed",
		before>>20, peak>>20, (peak-before)>>20, replayRSSBound>>20, replayed)
	if growth := peak - before; growth > replayRSSBound {
		t.Errorf("edge RSS grew by %d MiB with %d hostile replays, over the bound of %d MiB", growth>>20, replayClients, replayRSSBound>>20)
	}
	if replayed <= 0 {
		t.Error("no event was replayed: the hostile load did not reach the edge")
	}
	if opened.IsZero() {
		t.Errorf("the %d hostile streams did not all open within 25 s", replayClients)
	}
	for _, c := range conns {
		c.Close()
	}
}

var edgeSecret = []byte("rss-test-secret")

// readBefore reads the hostile users' and topics' streams as a client that
// connects does, before they have events: a position just below a stream's
// first event is then a start position that the history can place (see
// delivery's history epochs), not one from before a loss of Redis' data.
func readBefore(t *testing.T, rdb redis.UniversalClient, prefix string, topics []string) {
	t.Helper()
	hist, err := history.New(rdb, prefix, delivery.HistoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var streams []delivery.Stream
	for i := range replayClients {
		streams = append(streams, delivery.UserStream("hostile"+strconv.Itoa(i)))
	}
	for _, topic := range topics {
		streams = append(streams, delivery.TopicStream(topic))
	}
	if _, err := hist.Since(context.Background(), streams, make([]*uint64, len(streams))); err != nil {
		t.Fatal(err)
	}
}

// testEdgeProcess is an sseedge binary running as a child process.
type testEdgeProcess struct {
	cmd        *exec.Cmd
	addr, adm  string
	metricsURL string
}

// newTestEdgeProcess builds ./cmd/sseedge and runs it on the shared Redis
// under prefix, until the test ends.
func newTestEdgeProcess(tb testing.TB, prefix string) *testEdgeProcess {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "sseedge")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	e := &testEdgeProcess{
		addr: "127.0.0.1:" + strconv.Itoa(testenv.FreePort(tb)),
		adm:  "127.0.0.1:" + strconv.Itoa(testenv.FreePort(tb)),
	}
	e.metricsURL = "http://" + e.adm + "/metrics"
	e.cmd = exec.Command(bin, "-http-addr", e.addr, "-admin-addr", e.adm,
		"-redis-addr", testenv.RedisAddr(), "-redis-prefix", prefix,
		"-write-timeout", "30s", "-log-level", "warn", "-drain-period", "100ms")
	e.cmd.Env = append(os.Environ(), "HERALD_JWT_SECRET="+string(edgeSecret))
	e.cmd.Stderr = os.Stderr
	if err := e.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = e.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
			<-done
		}
	})
	testenv.WaitFor(tb, 20*time.Second, "the edge to be ready", func() bool {
		resp, err := http.Get("http://" + e.adm + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return e
}

// rss reads the process's resident set size from /proc.
func (e *testEdgeProcess) rss(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc status")
	return 0
}

// metric reads an unlabelled sample from the edge's /metrics page.
func (e *testEdgeProcess) metric(tb testing.TB, name string) float64 {
	tb.Helper()
	resp, err := http.Get(e.metricsURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// openStalled sends a stream request with cursor as Last-Event-ID on a
// connection with a small receive buffer, and never reads it.
func (e *testEdgeProcess) openStalled(tb testing.TB, tok string, topics []string, cursor string) net.Conn {
	tb.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	q := "access_token=" + tok
	for _, t := range topics {
		q += "&topic=" + t
	}
	req := "GET /v1/events?" + q + " HTTP/1.1\r\nHost: edge\r\nLast-Event-ID: " + cursor + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		tb.Fatal(err)
	}
	return c
}
