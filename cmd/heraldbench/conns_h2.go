package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Idle streams over HTTP/2: the edge serves h2c (HTTP/2 without TLS, with
// prior knowledge) beside HTTP/1.1, and an h2 stream stays with net/http
// (a handler goroutine and its buffers) where an HTTP/1.1 one is taken
// over. -idle-h2 measures what it costs, the same way as the idle
// scenario's HTTP/1.1 streams.

// maxH2Streams bounds -idle-h2: net/http's HTTP/2 server, which the edge
// uses, lets a connection have 250 streams at once, and a client asking
// for more would wait for a slot that never frees.
const maxH2Streams = 250

// idleH2Scenario begins the scenario name of each -idle-h2 run.
const idleH2Scenario = "idle h2c"

// openH2 opens c.Count streams over HTTP/2 connections of c.H2 streams
// each (the last may have fewer), c.Dials connections being opened at
// once. A connection's source address is that of its first stream.
func (h *holder) openH2(c command) reply {
	per := c.H2
	nConns := (c.Count + per - 1) / per
	sem := make(chan struct{}, max(c.Dials, 1))
	results := make(chan h2Result, nConns)
	now := time.Now()
	for j := range nConns {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			first := j * per
			var src string
			if len(c.Addrs) > 0 {
				src = c.Addrs[first%len(c.Addrs)]
			}
			results <- h.dialH2(c, first, min(per, c.Count-first), src, now)
		}()
	}
	var r reply
	for range nConns {
		res := <-results
		r.Opened += res.opened
		r.Failed += res.failed
		if res.err != nil && r.Error == "" {
			r.Error = res.err.Error()
		}
		if res.conn != nil {
			h.mu.Lock()
			h.conns = append(h.conns, res.conn)
			h.mu.Unlock()
		}
	}
	return r
}

// h2Result is one HTTP/2 connection's opening: the connection, nil when
// no stream opened on it.
type h2Result struct {
	conn           net.Conn
	opened, failed int
	err            error
}

// dialH2 opens one connection and n streams on it, one after another, for
// the users from c.First+first, with net/http's ClientConn: HTTP/2 only,
// without TLS. Closing the connection ends them all.
func (h *holder) dialH2(c command, first, n int, src string, now time.Time) h2Result {
	fail := func(conn net.Conn, opened int, err error) h2Result {
		if opened == 0 {
			if conn != nil {
				conn.Close()
			}
			conn = nil
		}
		return h2Result{conn: conn, opened: opened, failed: n - opened, err: err}
	}
	base, err := url.Parse(c.Edge)
	if err != nil {
		return fail(nil, 0, err)
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	var conn net.Conn
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err == nil {
			_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
			conn = nc
		}
		return nc, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := tr.NewClientConn(ctx, "http", base.Host)
	if err != nil {
		return fail(conn, 0, err)
	}
	for k := range n {
		u, err := streamURL(c, c.Prefix+strconv.Itoa(c.First+first+k), now)
		if err != nil {
			return fail(conn, k, err)
		}
		req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return fail(conn, k, err)
		}
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			return fail(conn, k, fmt.Errorf("%s %s: %s", resp.Proto, resp.Status, strings.TrimSpace(string(b))))
		}
		h.wg.Add(1)
		go h.read(bufio.NewReaderSize(resp.Body, 1024))
	}
	_ = conn.SetDeadline(time.Time{})
	return h2Result{conn: conn, opened: n}
}

// idleH2 runs the idle scenario over HTTP/2 once for each -idle-h2 number
// of streams a connection.
func (b *bench) idleH2(ctx context.Context) error {
	for _, per := range b.cfg.idleH2 {
		if err := b.idleH2Run(ctx, per); err != nil {
			return fmt.Errorf("h2c, %d streams a connection: %w", per, err)
		}
	}
	return nil
}

func (b *bench) idleH2Run(ctx context.Context, per int) error {
	sc := fmt.Sprintf("%s, %d streams/conn", idleH2Scenario, per)
	if per == 1 {
		sc = idleH2Scenario + ", 1 stream/conn"
	}
	n := b.cfg.idleConns
	if b.sys != nil {
		if room := fileRoom(); (n+per-1)/per > room {
			b.rep.note("%s: %d streams asked, %d held: the edge runs in this process, which may have %d more open files", sc, n, room*per, room)
			n = room * per
		}
	}
	edge, haveEdge := b.proc("edge")
	self := haveEdge && b.sys != nil
	// The edge at rest: the streams of an earlier run have gone.
	if err := waitEdgeClosed(ctx, b.cfg.edgeURL, 60*time.Second); err != nil {
		b.rep.note("%s: the edge at rest: %v", sc, err)
	}
	var m0, m1 runtime.MemStats
	if self {
		freeMemory()
		runtime.ReadMemStats(&m0)
	}
	g0 := runtime.NumGoroutine()
	before, _ := readProc(edge.PID)
	k0 := readKernel()
	b.progress("%s: opening %d streams", sc, n)
	start := time.Now()
	cfg := b.fleetConfig(fmt.Sprintf("%s-idleh2x%d-", b.tag, per), n, "")
	cfg.h2 = per
	f, err := openFleet(ctx, cfg)
	if err != nil {
		return err
	}
	defer f.close()
	took := time.Since(start)
	time.Sleep(2 * time.Second) // leases written, buffers settled
	if self {
		freeMemory()
		runtime.ReadMemStats(&m1)
	}
	g1 := runtime.NumGoroutine()
	after, _ := readProc(edge.PID)
	k1 := readKernel()
	if b.cfg.memProfile != "" && self {
		// One profile a run: FILE.h2x<streams a connection>.
		if err := writeHeapProfile(fmt.Sprintf("%s.h2x%d", b.cfg.memProfile, per)); err != nil {
			return err
		}
	}
	tcp, _, tcpErr := edgeConnections(b.cfg.edgeURL)
	rep, err := f.report()
	if err != nil {
		return err
	}

	// Per stream is over the streams still open.
	open := f.conns - rep.Closed
	b.rep.add(sc, "streams opened", float64(f.conns), "streams")
	b.rep.add(sc, "streams held", float64(open), "streams")
	b.rep.add(sc, "streams the edge ended while held", float64(rep.Closed), "streams")
	if rep.Closed > 0 {
		b.rep.note("%s: the edge ended %d of the %d streams opened before they were measured (the first: %s); the figures per stream are over the %d still open",
			sc, rep.Closed, f.conns, rep.CloseErr, open)
	}
	if open <= 0 {
		return fmt.Errorf("the edge ended all %d streams: %s", f.conns, rep.CloseErr)
	}
	if tcpErr == nil {
		b.rep.add(sc, "TCP connections to the edge (/proc/net/tcp)", float64(tcp), "conns")
	} else {
		b.rep.note("%s: TCP connections not counted: %v", sc, tcpErr)
	}
	b.rep.add(sc, "streams opened a second", float64(f.conns)/took.Seconds(), "stream/s")
	if haveEdge {
		growth := float64(after.RSS-before.RSS) / float64(open) / 1024
		if h1, ok := b.rep.find("idle", "edge RSS growth per connection"); ok {
			b.rep.addVs(sc, "edge RSS growth per stream", growth, "KiB", h1.Value, "HTTP/1.1 stream")
		} else {
			b.rep.add(sc, "edge RSS growth per stream", growth, "KiB")
		}
		b.rep.add(sc, "edge RSS with the streams", float64(after.RSS)/(1<<20), "MiB")
	} else {
		b.rep.note("%s: no edge process to read (-pids edge=PID)", sc)
	}
	if self {
		b.rep.add(sc, "edge heap growth per stream", (float64(m1.HeapAlloc)-float64(m0.HeapAlloc))/float64(open)/1024, "KiB")
		b.rep.add(sc, "edge goroutine stacks per stream", (float64(m1.StackInuse)-float64(m0.StackInuse))/float64(open)/1024, "KiB")
		b.rep.add(sc, "edge goroutines per stream", float64(g1-g0)/float64(open), "goroutines")
	}
	kern := float64(k1.SUnreclaim-k0.SUnreclaim+k1.TCPMem-k0.TCPMem) / float64(open) / 1024
	b.rep.add(sc, "kernel memory per stream, both ends (est.)", kern, "KiB")
	return nil
}

// waitEdgeClosed waits until the edge, when it runs on this machine, holds
// no connection open (established, or closed by the client only), for at
// most timeout.
func waitEdgeClosed(ctx context.Context, edgeURL string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, held, err := edgeConnections(edgeURL)
		if err != nil || held == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections still open after %s", held, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// edgeConnections counts this machine's established TCP connections to
// the edge's address (clients: the children's, whether the edge is here or
// not), and the edge's own ends, which have its address as the local one,
// still open: established, or closed by the client and not yet by the edge
// (held). With the edge named by a host name, any address with its port
// counts.
func edgeConnections(edgeURL string) (clients, held int, err error) {
	u, err := url.Parse(edgeURL)
	if err != nil {
		return 0, 0, err
	}
	port, err := strconv.ParseUint(u.Port(), 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("edge URL %s: no port", edgeURL)
	}
	// /proc/net/tcp prints an IPv4 address as the 32-bit word in host
	// order: byte-reversed on the little-endian machines Go runs on here.
	want := fmt.Sprintf(":%04X", port)
	if ip := net.ParseIP(u.Hostname()).To4(); ip != nil {
		want = fmt.Sprintf("%02X%02X%02X%02X", ip[3], ip[2], ip[1], ip[0]) + want
	}
	// The kernel writes the table a chunk at a time, as sockets come and
	// go: a socket may be listed twice. Each counts once.
	seen := make(map[string]bool)
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			if os.IsNotExist(err) && file == "/proc/net/tcp6" {
				continue
			}
			return 0, 0, err
		}
		for line := range strings.Lines(string(b)) {
			// sl local_address rem_address st ...; st 01 is ESTABLISHED,
			// 08 CLOSE_WAIT.
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			if seen[f[1]+" "+f[2]] {
				continue
			}
			seen[f[1]+" "+f[2]] = true
			local, remote, st := strings.HasSuffix(f[1], want), strings.HasSuffix(f[2], want), f[3]
			switch {
			case remote && !local && st == "01":
				clients++
			case local && !remote && (st == "01" || st == "08"):
				held++
			}
		}
	}
	return clients, held, nil
}
