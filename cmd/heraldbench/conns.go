package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herald-push/herald/sseedge"
)

// childFlag, as the first argument, makes heraldbench a connection holder:
// a child process that opens SSE connections as its parent tells it on
// standard input and reports what they received as JSON lines on standard
// output. Connections are spread over children because one process may hold
// only so many open files.
const childFlag = "-heraldbench-child"

// command is what the parent sends a child, one JSON object a line.
type command struct {
	Op string `json:"op"` // open, poll, notify, batch, reset, report, close
	// open: connect users Prefix+First .. Prefix+First+Count-1, one
	// connection each, to Edge, reading Topic too when set.
	Edge   string   `json:"edge,omitempty"`
	Secret []byte   `json:"secret,omitempty"`
	Prefix string   `json:"prefix,omitempty"`
	First  int      `json:"first,omitempty"`
	Count  int      `json:"count,omitempty"`
	Topic  string   `json:"topic,omitempty"`
	Addrs  []string `json:"addrs,omitempty"` // source addresses, one per connection; empty lets the kernel choose
	Dials  int      `json:"dials,omitempty"` // connections being opened at once
	// H2, when above 0, opens the streams over HTTP/2 without TLS (h2c),
	// H2 streams a connection (see openH2).
	H2 int `json:"h2,omitempty"`
	// poll: Count clients, users Prefix+First..., each GETting Edge+user
	// every Every, for For (see poll).
	Every time.Duration `json:"every,omitempty"`
	For   time.Duration `json:"for,omitempty"`
	// notify: Rate Notify calls a second, open loop from Workers workers,
	// for For, through the router at Grpc, round robin over users
	// Prefix+0 .. Prefix+Count-1. A backend's calls are not the server's
	// work: a scenario that weighs the server's CPU sends them from a child.
	Grpc    string  `json:"grpc,omitempty"`
	Rate    float64 `json:"rate,omitempty"`
	Workers int     `json:"workers,omitempty"`
	Stream  bool    `json:"stream,omitempty"` // on one NotifyStream instead of Notify calls
	// batch: Workers closed-loop callers of NotifyBatch calls of Size
	// notifications, for For, through Grpc, round robin over the same
	// users; every notification must take Route.
	Size  int    `json:"size,omitempty"`
	Route string `json:"route,omitempty"`
}

// reply is a child's answer to a command.
type reply struct {
	Op       string      `json:"op"`
	Opened   int         `json:"opened,omitempty"`
	Failed   int         `json:"failed,omitempty"`
	Error    string      `json:"error,omitempty"`     // the first failure
	Received uint64      `json:"received,omitempty"`  // events since the last reset
	Bad      uint64      `json:"bad,omitempty"`       // events without a bench payload
	Closed   int         `json:"closed,omitempty"`    // connections the edge ended
	CloseErr string      `json:"close_err,omitempty"` // how the first of them ended
	Latency  *hist       `json:"latency,omitempty"`   // receive time minus the payload's t
	Load     *loadResult `json:"load,omitempty"`      // notify: what the calls measured
}

// payload is the data of every notification heraldbench sends.
type payload struct {
	T int64 `json:"t"` // scheduled send time, unix nanoseconds
	N int64 `json:"n"` // sequence number
}

// holder holds SSE connections and measures what arrives on them.
type holder struct {
	mu       sync.Mutex
	lat      hist
	received uint64
	bad      uint64
	closed   atomic.Int64
	closeErr string // how the first stream to end ended
	conns    []net.Conn
	wg       sync.WaitGroup
}

// runChild is a child's main loop: commands on in, replies on out.
func runChild(in io.Reader, out io.Writer) error {
	h := &holder{}
	defer h.closeAll()
	return serveCommands(in, out, func(c command) (reply, bool) {
		var r reply
		switch c.Op {
		case "open":
			r = h.open(c)
		case "poll":
			r = poll(c)
		case "notify":
			r = notifyLoad(c)
		case "batch":
			r = batchLoad(c)
		case "reset":
			h.mu.Lock()
			h.lat, h.received, h.bad = hist{}, 0, 0
			h.mu.Unlock()
		case "report":
			h.mu.Lock()
			lat := h.lat // the readers go on recording: copy the buckets
			lat.Counts = maps.Clone(h.lat.Counts)
			r = reply{Received: h.received, Bad: h.bad, Latency: &lat, CloseErr: h.closeErr}
			h.mu.Unlock()
			r.Closed = int(h.closed.Load())
		case "close":
			h.closeAll()
		default:
			r.Error = "unknown op " + c.Op
		}
		r.Op = c.Op
		return r, c.Op == "close"
	})
}

// serveCommands is a child process's loop: it decodes each command from in,
// writes handle's reply to out, and returns at the end of in or after the
// reply to the command handle says is the last.
func serveCommands[C, R any](in io.Reader, out io.Writer, handle func(C) (reply R, last bool)) error {
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	for {
		var c C
		if err := dec.Decode(&c); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		r, last := handle(c)
		if err := enc.Encode(r); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}

func (h *holder) open(c command) reply {
	if c.H2 > 0 {
		return h.openH2(c)
	}
	now := time.Now()
	conns, failed, first := dialAll(c.Count, c.Dials, c.Addrs, func(i int, src string) (net.Conn, error) {
		conn, body, err := dialSSE(c, c.Prefix+strconv.Itoa(c.First+i), src, now)
		if err == nil {
			h.wg.Add(1)
			go h.read(body)
		}
		return conn, err
	})
	h.mu.Lock()
	h.conns = append(h.conns, conns...)
	h.mu.Unlock()
	return reply{Opened: len(conns), Failed: failed, Error: first}
}

// dialAll opens count streams with open, at most dials at once, the i-th
// from source address addrs[i % len(addrs)] (none: the kernel's choice).
// It returns the connections opened, how many failed, and the first
// failure.
func dialAll(count, dials int, addrs []string, open func(i int, src string) (net.Conn, error)) ([]net.Conn, int, string) {
	type result struct {
		conn net.Conn
		err  error
	}
	sem := make(chan struct{}, max(dials, 1))
	results := make(chan result, count)
	for i := range count {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			var src string
			if len(addrs) > 0 {
				src = addrs[i%len(addrs)]
			}
			conn, err := open(i, src)
			results <- result{conn, err}
		}()
	}
	var (
		conns  []net.Conn
		failed int
		first  string
	)
	for range count {
		res := <-results
		if res.err != nil {
			if failed == 0 {
				first = res.err.Error()
			}
			failed++
			continue
		}
		conns = append(conns, res.conn)
	}
	return conns, failed, first
}

// dialSSE opens one stream over a bare HTTP/1.1 connection: a net/http
// Transport would spend two goroutines and two buffers per connection.
func dialSSE(c command, user, src string, now time.Time) (net.Conn, *bufio.Reader, error) {
	u, err := streamURL(c, user, now)
	if err != nil {
		return nil, nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		return nil, nil, err
	}
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	req.Header.Set("Accept", "text/event-stream")
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 2048)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, bufio.NewReaderSize(resp.Body, 1024), nil
}

// streamURL is the edge's stream URL for user, with a token it issues.
func streamURL(c command, user string, now time.Time) (*url.URL, error) {
	var topics []string
	if c.Topic != "" {
		topics = []string{c.Topic}
	}
	tok, err := sseedge.IssueToken(c.Secret, user, 24*time.Hour, now, topics...)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(c.Edge)
	if err != nil {
		return nil, err
	}
	q := url.Values{"access_token": {tok}}
	if c.Topic != "" {
		q.Set("topic", c.Topic)
	}
	u.Path, u.RawQuery = "/v1/events", q.Encode()
	return u, nil
}

// read decodes one stream's events until it ends.
func (h *holder) read(body *bufio.Reader) {
	defer h.wg.Done()
	dec := sseedge.NewDecoder(body)
	for {
		ev, err := dec.Next()
		if err != nil {
			if h.closed.Add(1) == 1 {
				h.mu.Lock()
				h.closeErr = err.Error()
				h.mu.Unlock()
			}
			return
		}
		if ev.Data == "" {
			continue
		}
		at := time.Now()
		var p payload
		ok := json.Unmarshal([]byte(ev.Data), &p) == nil && p.T > 0
		h.mu.Lock()
		if ok {
			h.received++
			h.lat.record(at.Sub(time.Unix(0, p.T)))
		} else {
			h.bad++
		}
		h.mu.Unlock()
	}
}

func (h *holder) closeAll() {
	h.mu.Lock()
	conns := h.conns
	h.conns = nil
	h.mu.Unlock()
	// Close at about 5,000 a second: a few thousand disconnects in the same
	// millisecond are a storm of presence removals no real edge sees.
	for i, c := range conns {
		c.Close()
		if i%100 == 99 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	h.wg.Wait()
	h.closed.Store(0)
	h.closeErr = ""
}

// child is the parent's handle on a connection holder process.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	enc *json.Encoder
	dec *json.Decoder
	pid int
	mu  sync.Mutex
}

// reexec starts this program again with flag as its only argument, its
// standard input and output piped to the caller and its standard error
// shared.
func reexec(ctx context.Context, flag string) (*exec.Cmd, io.WriteCloser, io.ReadCloser, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.CommandContext(ctx, exe, flag)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, fmt.Errorf("start %s: %w", flag, err)
	}
	return cmd, in, out, nil
}

// startChild re-executes this program as a connection holder.
func startChild(ctx context.Context) (*child, error) {
	cmd, in, out, err := reexec(ctx, childFlag)
	if err != nil {
		return nil, err
	}
	return &child{cmd: cmd, in: in, enc: json.NewEncoder(in), dec: json.NewDecoder(bufio.NewReader(out)), pid: cmd.Process.Pid}, nil
}

func (c *child) call(cmd command) (reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enc.Encode(cmd); err != nil {
		return reply{}, fmt.Errorf("child %d: %w", c.pid, err)
	}
	var r reply
	if err := c.dec.Decode(&r); err != nil {
		return reply{}, fmt.Errorf("child %d: %w", c.pid, err)
	}
	if r.Op != cmd.Op {
		return r, fmt.Errorf("child %d answered %q to %q", c.pid, r.Op, cmd.Op)
	}
	return r, nil
}

// stop ends the child: closing its standard input makes it close its
// connections and exit.
func (c *child) stop() error {
	c.in.Close()
	return c.cmd.Wait()
}
