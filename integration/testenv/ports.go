package testenv

import (
	mathrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, as
// was port+10000 (a Redis Cluster node's bus port), and reserves both for
// the rest of the test.
//
// The ports are below the kernel's ephemeral range, from which every
// listener on port 0 and every connection's local port is taken: so none of
// those, in this test or in any other process, takes the port while a
// server is down between a stop and its start on the same port
// (RedisServer.Restart, Kafka.Start). The reservation is a lock on a file
// named after the port, which every test process on the machine takes
// before it hands the port out: two tests that run at once (in one test
// binary or in two) never get the same port, nor a port the other's server
// is restarting on.
func FreePort(tb testing.TB) int {
	tb.Helper()
	if top := ephemeralLow() - busOffset; top-portFloor >= 1000 {
		for range 200 {
			p := portFloor + mathrand.IntN(top-portFloor)
			if reserve(tb, p) {
				return p
			}
		}
	}
	// No room below the ephemeral range: a port from it.
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if p+busOffset <= 65535 && reserve(tb, p) {
			return p
		}
	}
	tb.Fatal("no free port with a free port 10000 above it")
	return 0
}

// portFloor is the lowest port FreePort gives, above most well-known
// services' ports; busOffset is how far above its port a Redis Cluster
// node listens for its bus.
const portFloor, busOffset = 10000, 10000

// reserve takes the locks of port and port+busOffset, held until the test's
// cleanup, and reports whether it got both and both ports are free now.
func reserve(tb testing.TB, port int) bool {
	dir := filepath.Join(os.TempDir(), "herald-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		tb.Fatalf("port reservations: %v", err)
	}
	var held []*os.File
	release := func() {
		for _, f := range held {
			_ = f.Close() // closing the file drops its lock
		}
	}
	for _, p := range []int{port, port + busOffset} {
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			release()
			tb.Fatalf("port reservations: %v", err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			_ = f.Close()
			release()
			return false
		}
		held = append(held, f)
	}
	if !bindable(port) || !bindable(port+busOffset) {
		release()
		return false
	}
	tb.Cleanup(release)
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768 // Linux's default
	}
	low, err := strconv.Atoi(strings.Fields(string(b) + " x")[0])
	if err != nil {
		return 32768
	}
	return low
}

// bindable reports whether port is free on 127.0.0.1 now.
func bindable(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
