package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// childEnv, set, makes the test binary run the router's main instead of the
// tests: the flood test measures a router process of its own.
const childEnv = "HERALD_TEST_ROUTER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// routerProc is a router running as a child process.
type routerProc struct {
	cmd  *exec.Cmd
	addr string
}

// newTestRouterProc starts the router (this test binary, as its main) with
// one caller of key "k1", against the shared Redis under a prefix of its
// own, and waits until it listens. flags are added to its command line.
func newTestRouterProc(tb testing.TB, flags ...string) *routerProc {
	tb.Helper()
	callers := filepath.Join(tb.TempDir(), "callers.json")
	b, _ := json.Marshal([]router.CallerConfig{{Name: "svc", KeySHA256: router.HashKey("k1"), Users: []string{"*"}}})
	if err := os.WriteFile(callers, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	_, prefix := testenv.Redis(tb)
	args := []string{"-grpc-addr", "127.0.0.1:0", "-admin-addr", "", "-offline=false",
		"-callers-file", callers, "-redis-addr", testenv.RedisAddr(), "-redis-prefix", prefix, "-log-format", "json"}
	cmd := exec.Command(os.Args[0], append(args, flags...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &routerProc{cmd: cmd}
	addrc := make(chan string, 1)
	var logs bytes.Buffer
	var logMu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logs.Write(append(sc.Bytes(), '\n'))
			logMu.Unlock()
			var line struct{ Msg, GRPC string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "router listening" {
				addrc <- line.GRPC
			}
		}
	}()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		<-done
		if tb.Failed() {
			logMu.Lock()
			tb.Logf("router's log:\n%s", logs.String())
			logMu.Unlock()
		}
	})
	select {
	case p.addr = <-addrc:
	case <-time.After(15 * time.Second):
		tb.Fatal("router did not start listening within 15s")
	}
	return p
}

// rss reads a field of the process's /proc status, in bytes: VmRSS (now)
// or VmHWM (the peak).
func (p *routerProc) rss(tb testing.TB, field string) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatalf("no %s in /proc status", field)
	return 0
}

// notifyHeaders is the HPACK block of a Notify call's headers with n bytes
// of metadata besides, for a new connection.
func notifyHeaders(addr string, n int) []byte {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: addr},
		{Name: ":path", Value: "/herald.v1.RouterService/Notify"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		_ = enc.WriteField(f)
	}
	value := strings.Repeat("v", 4096)
	for i := 0; block.Len() < n; i++ {
		_ = enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: value})
	}
	return block.Bytes()
}

// rawHeaders opens an HTTP/2 connection that ignores the router's
// advertised limits, as an attacker would, and sends the header block of a
// call, holding the stream open. It returns what the router answered:
// "rst_stream", "goaway", "closed", or "none" when it answered nothing
// within wait.
func rawHeaders(tb testing.TB, addr string, block []byte, wait time.Duration) string {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Error(err)
		return "dial failed"
	}
	defer c.Close()
	fr := http2.NewFramer(c, c)
	go func() { // a write that the router stops reading must not hang the test
		if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
			return
		}
		_ = fr.WriteSettings()
		var err error
		rest := block
		first := true
		for len(rest) > 0 {
			chunk := rest[:min(len(rest), 16<<10)]
			rest = rest[len(chunk):]
			if first {
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: chunk, EndHeaders: len(rest) == 0})
				first = false
			} else {
				err = fr.WriteContinuation(1, len(rest) == 0, chunk)
			}
			if err != nil {
				return
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	rfr := http2.NewFramer(nil, c)
	for {
		f, err := rfr.ReadFrame()
		switch {
		case err != nil && os.IsTimeout(err):
			return "none"
		case err != nil:
			return "closed"
		}
		switch f.(type) {
		case *http2.RSTStreamFrame:
			return "rst_stream"
		case *http2.GoAwayFrame:
			return "goaway"
		}
	}
}

// TestUnauthenticatedFloodBoundsRSS: callers without credentials send, 20 at
// once, calls with 8 MB of metadata (over raw HTTP/2, ignoring the
// router's advertised limit), then calls with requests just under and over
// the request size limit. The router answers each with an error (a reset
// or closed connection for the metadata, UNAUTHENTICATED for the requests,
// whose bytes it does not read), and its peak RSS grows by less than
// floodRSSBound. Before the limits it grew by hundreds of MB.
func TestUnauthenticatedFloodBoundsRSS(t *testing.T) {
	const (
		callers       = 20
		metadataBytes = 8 << 20
		floodRSSBound = 48 << 20
	)
	p := newTestRouterProc(t)
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := heraldv1.NewRouterServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A first call warms the router up (connection, code paths) before the
	// baseline is read.
	if _, err := client.Notify(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer k1"),
		&heraldv1.NotifyRequest{UserId: "warm", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	before := p.rss(t, "VmRSS")

	var wg sync.WaitGroup
	answers := make([]string, callers)
	block := notifyHeaders(p.addr, metadataBytes)
	for i := range callers {
		wg.Go(func() { answers[i] = rawHeaders(t, p.addr, block, 10*time.Second) })
	}
	wg.Wait()
	for i, a := range answers {
		if a == "none" {
			t.Errorf("raw caller %d: the router answered 8 MB of metadata with nothing in 10s, want a reset or a closed connection", i)
		}
	}

	// A grpc-go client honours the advertised limit and fails the call.
	big := metadata.AppendToOutgoingContext(ctx, "x-pad", strings.Repeat("v", metadataBytes))
	if _, err := client.Notify(big, &heraldv1.NotifyRequest{UserId: "alice"}); status.Code(err) != codes.Internal ||
		!strings.Contains(err.Error(), "header list size") {
		t.Errorf("8 MB of metadata from grpc-go: %v, want the client's header list size error", err)
	}

	// Requests just under and just over the request limit, without
	// credentials: refused before they are read.
	for _, size := range []int{router.DefaultMaxRequestBytes - 64<<10, router.DefaultMaxRequestBytes + 64<<10} {
		req := &heraldv1.NotifyBatchRequest{Notifications: []*heraldv1.NotifyRequest{{UserId: "alice", Data: bytes.Repeat([]byte("x"), size)}}}
		errs := make([]error, callers)
		for i := range callers {
			wg.Go(func() { _, errs[i] = client.NotifyBatch(ctx, req) })
		}
		wg.Wait()
		for i, err := range errs {
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("request of %d bytes without credentials, caller %d: %v, want Unauthenticated", size, i, err)
			}
		}
	}

	peak := p.rss(t, "VmHWM")
	t.Logf("router RSS %d MB before, peak %d MB during the flood: grew %.1f MB (bound %d MB)",
		before>>20, peak>>20, float64(peak-before)/(1<<20), floodRSSBound>>20)
	if peak-before > floodRSSBound {
		t.Errorf("router peak RSS grew by %d MB under the flood, over the bound of %d MB", (peak-before)>>20, floodRSSBound>>20)
	}
}
