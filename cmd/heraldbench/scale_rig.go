package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The scale scenario's rig: a redis-server of its own, the real router and
// sseedge binaries as child processes, each edge on a port of its own, all
// on that one Redis.

// daemonProc is a Herald binary run as a child process.
type daemonProc struct {
	name  string
	cmd   *exec.Cmd
	pid   int
	done  chan struct{} // closed when the process has exited
	err   error         // its exit, once done is closed
	admin string        // its admin listener, host:port
}

// scaleRig is the processes of one scale run.
type scaleRig struct {
	binDir  string // where the binaries are
	ownBins bool   // binDir is a temporary directory of this run's builds
	redis   *ownRedis
	router  *daemonProc
	edges   []*daemonProc
	urls    []string // the edges' base URLs
	grpc    string   // the router's address
	secret  []byte
}

// buildDaemons builds cmd/router and cmd/sseedge into a temporary
// directory with the go command, from the module heraldbench runs in.
func buildDaemons(ctx context.Context) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("scale: the go command is not on PATH to build cmd/router and cmd/sseedge; build them and give their directory with -scale-bin")
	}
	dir, err := os.MkdirTemp("", "heraldbench-scale-")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/herald-push/herald/cmd/router", "github.com/herald-push/herald/cmd/sseedge")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("scale: go build cmd/router cmd/sseedge (run heraldbench inside the Herald module, or give -scale-bin): %w\n%s", err, out)
	}
	return dir, nil
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startDaemon runs bin with args and env added to this process's
// environment, and waits until its admin listener says it is ready.
func startDaemon(ctx context.Context, name, bin, admin string, args, env []string) (*daemonProc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemonProc{name: name, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), admin: admin}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + admin + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, nil
			}
			err = errors.New(resp.Status)
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("%s exited before it was ready: %v", name, d.err)
		case <-ctx.Done():
			d.stop(0)
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop(0)
			return nil, fmt.Errorf("%s not ready after 30s: %v", name, err)
		}
	}
}

// stop sends SIGTERM, and SIGKILL after grace.
func (d *daemonProc) stop(grace time.Duration) error {
	select {
	case <-d.done:
		return d.err
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM: killed", d.name, grace)
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) && !ee.Exited() {
		return nil // ended by the signal before its handler was set: fine
	}
	return d.err
}

// exited reports a daemon that ended before it was asked to.
func (d *daemonProc) exited() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited during the run: %v", d.name, d.err)
	default:
		return nil
	}
}

// startScaleRig starts Redis, the router and the edges, each edge allowed
// maxConns streams.
func startScaleRig(ctx context.Context, c scaleConfig, tag string, maxConns int) (r *scaleRig, err error) {
	r = &scaleRig{binDir: c.bin}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.binDir == "" {
		if r.binDir, err = buildDaemons(ctx); err != nil {
			return r, err
		}
		r.ownBins = true
	}
	if r.redis, err = startOwnRedis(ctx); err != nil {
		return r, fmt.Errorf("scale: %w", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	// Hex: the key travels in the environment, which holds no NUL.
	r.secret = []byte(hex.EncodeToString(key))
	common := []string{"-redis-addr", r.redis.addr, "-redis-prefix", "heraldbench:" + tag + ":",
		"-log-format", "text", "-log-level", "warn"}
	if r.grpc, err = freeAddr(); err != nil {
		return r, err
	}
	admin, err := freeAddr()
	if err != nil {
		return r, err
	}
	// Users are online, so the offline path (Kafka) is left out.
	r.router, err = startDaemon(ctx, "router", filepath.Join(r.binDir, "router"), admin,
		append([]string{"-grpc-addr", r.grpc, "-admin-addr", admin, "-insecure-no-auth", "-offline=false"}, common...), nil)
	if err != nil {
		return r, err
	}
	for e := range c.edges {
		addr, err := freeAddr()
		if err != nil {
			return r, err
		}
		admin, err := freeAddr()
		if err != nil {
			return r, err
		}
		name := "edge " + strconv.Itoa(e+1)
		d, err := startDaemon(ctx, name, filepath.Join(r.binDir, "sseedge"), admin,
			append([]string{"-http-addr", addr, "-admin-addr", admin, "-edge-id", tag + "-edge-" + strconv.Itoa(e+1),
				"-max-conns", strconv.Itoa(maxConns), "-drain-period", "1s"}, common...),
			[]string{"HERALD_JWT_SECRET=" + string(r.secret)})
		if err != nil {
			return r, err
		}
		r.edges = append(r.edges, d)
		r.urls = append(r.urls, "http://"+addr)
	}
	return r, nil
}

// exited reports a process of the rig that ended on its own.
func (r *scaleRig) exited() error {
	for _, d := range append([]*daemonProc{r.router}, r.edges...) {
		if err := d.exited(); err != nil {
			return err
		}
	}
	return nil
}

// close stops the edges, the router and Redis, and removes the builds. It
// returns the first daemon that did not stop cleanly.
func (r *scaleRig) close() error {
	var first error
	for _, d := range append(r.edges, r.router) {
		if d == nil {
			continue
		}
		if err := d.stop(15 * time.Second); err != nil && first == nil {
			first = err
		}
	}
	if r.redis != nil {
		r.redis.stop()
	}
	if r.ownBins {
		os.RemoveAll(r.binDir)
	}
	return first
}
