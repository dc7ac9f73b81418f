// Package testenv gives Herald's tests the real parts they run against: a
// Redis connection with a key prefix of the test's own, redis-server processes
// and Redis Clusters on free ports, an in-process Kafka (kfake) and the
// offline path on it, a publisher with its presence registry (and users
// online as an edge makes them), a daemon served on a free port, an OTLP
// collector, metric readers, and polling helpers.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisAddr is the shared redis-server the tests use: $HERALD_TEST_REDIS_ADDR,
// or 127.0.0.1:6379.
func RedisAddr() string {
	if a := os.Getenv("HERALD_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Redis connects to the shared redis-server and returns the client and a key
// prefix unique to this test. Keys under the prefix are deleted at cleanup.
// It fails the test, saying how to start Redis, when none answers.
func Redis(tb testing.TB) (*redis.Client, string) {
	tb.Helper()
	addr := RedisAddr()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		tb.Fatalf("no redis-server at %s (%v): run `make test`, which installs and starts it, "+
			"or `apt-get install redis-server && redis-server --daemonize yes --save ''`, "+
			"or set HERALD_TEST_REDIS_ADDR", addr, err)
	}
	prefix := Prefix(tb)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		_ = rdb.Close()
	})
	return rdb, prefix
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Prefix returns a Redis key prefix unique to this test run.
func Prefix(tb testing.TB) string {
	return "test:" + unsafeChars.ReplaceAllString(tb.Name(), "_") + ":" + RandomID() + ":"
}

// RandomID returns 8 random hex characters.
func RandomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RequireBinary returns the path of a binary the test needs, or fails the
// test saying how to install it. It never skips.
func RequireBinary(tb testing.TB, name, install string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s is not installed; install it with `%s` (or run `make test`, which does)", name, install)
	}
	return p
}

// RedisServer is a redis-server process of the test's own.
type RedisServer struct {
	Addr  string
	tb    testing.TB
	port  int
	dir   string
	extra []string
	cmd   *exec.Cmd
	// exited is closed when cmd has exited and been waited for.
	exited chan struct{}
}

// StartRedisServer starts a redis-server on a free port, with extra
// arguments, stopped at cleanup.
func StartRedisServer(tb testing.TB, extra ...string) *RedisServer {
	tb.Helper()
	s := &RedisServer{tb: tb, port: FreePort(tb), dir: tb.TempDir(), extra: extra}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

// Start starts the server (again) on its port and waits until it answers.
// A server that exits first fails the test with the end of its log.
func (s *RedisServer) Start() {
	s.tb.Helper()
	bin := RequireBinary(s.tb, "redis-server", "apt-get install -y redis-server")
	logfile := filepath.Join(s.dir, "redis.log")
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--logfile", logfile}, s.extra...)
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func(cmd *exec.Cmd) {
		_ = cmd.Wait()
		close(exited)
	}(s.cmd)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	WaitFor(s.tb, 10*time.Second, "redis-server on "+s.Addr+" to answer", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(logfile)
			if len(b) > 2000 {
				b = b[len(b)-2000:]
			}
			s.cmd = nil
			s.tb.Fatalf("redis-server on %s exited before it answered; its log ends:\n%s", s.Addr, b)
		default:
		}
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// Restart stops the server gracefully (see Shutdown) and starts it again on
// the same port.
func (s *RedisServer) Restart() {
	s.tb.Helper()
	s.Shutdown()
	s.Start()
}

// Shutdown stops the server gracefully, as an operator's restart does
// (SIGTERM: it flushes its append-only file, if it keeps one), and waits for
// it to exit. Start starts it again.
func (s *RedisServer) Shutdown() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		<-s.exited
		s.cmd = nil
	}
}

// Pause stops the server's process (SIGSTOP) and waits until it is
// stopped: it answers nothing, while the kernel still takes connections and
// bytes for it, as in a stall. Resume lets it go on.
func (s *RedisServer) Pause() {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.tb.Fatalf("stop redis-server: %v", err)
	}
	stat := "/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/stat"
	WaitFor(s.tb, 10*time.Second, "redis-server to stop", func() bool {
		b, err := os.ReadFile(stat)
		i := bytes.LastIndexByte(b, ')')
		return err == nil && i > 0 && len(b) > i+2 && b[i+2] == 'T'
	})
}

// Resume continues a paused server (SIGCONT).
func (s *RedisServer) Resume() {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.tb.Fatalf("continue redis-server: %v", err)
	}
}

// Stop kills the server and waits for it to exit.
func (s *RedisServer) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// WaitFor polls cond every 10ms until it holds, and fails the test with what
// it waited for when timeout passes first.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
