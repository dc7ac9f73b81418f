// Package lowrate runs a daemon (a main package's run function) in a child
// process of a test binary and measures what the child alone spends over a
// window: CPU time, context switches, and, with perf, system calls and
// futex calls. The low-rate trials of cmd/router and cmd/sseedge use it to
// see what one isolated call or event costs a server process, apart from
// the client that drives it.
package lowrate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/cmd/internal/proc"
)

const (
	childArgs = "HERALD_LOWRATE_CHILD_ARGS"
	// ChildEnv is extra environment for the child only, as space-separated
	// NAME=value pairs: GOMAXPROCS=1, GODEBUG=..., to weigh a runtime lever
	// without changing the client's process.
	ChildEnv = "HERALD_LOWRATE_CHILD_ENV"
)

// ServeChild runs run with the arguments its parent gave, when this test
// binary is a Start child; in any other run it skips the test. Call it
// from the test named in Start.
func ServeChild(t *testing.T, run func(args []string) error) {
	a, ok := os.LookupEnv(childArgs)
	if !ok {
		t.Skip("the child of a low-rate trial; runs only when started by one")
	}
	if err := run(strings.Split(a, "\n")); err != nil {
		t.Fatal(err)
	}
}

// Proc is a running child.
type Proc struct {
	Pid int
	cmd *exec.Cmd
	log string
}

// Start runs the test binary's test named test as a child, given args
// (which ServeChild hands to run), and stops it at cleanup with SIGTERM.
func Start(tb testing.TB, test string, args []string) *Proc {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), "child.log")
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), childArgs+"="+strings.Join(args, "\n"))
	cmd.Env = append(cmd.Env, strings.Fields(os.Getenv(ChildEnv))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &Proc{Pid: cmd.Process.Pid, cmd: cmd, log: logPath}
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = logf.Close()
	})
	return p
}

// WaitListening waits until addr accepts connections, failing with the
// child's log when it does not within 10 s.
func (p *Proc) WaitListening(tb testing.TB, addr string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(p.log)
	tb.Fatalf("child did not listen on %s: %s", addr, out)
}

// Window is the span a trial measures: $HERALD_LOWRATE_WINDOW, or 8 s.
func Window(tb testing.TB) time.Duration {
	v := os.Getenv("HERALD_LOWRATE_WINDOW")
	if v == "" {
		return 8 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// Figures are what a process spent over a window, per operation (a call,
// an event) made in it.
type Figures struct {
	CPU        float64 // µs of user and system time, from /proc (10 ms ticks)
	System     float64 // of which in the kernel
	Switches   float64 // context switches of all its threads
	Preempted  float64 // of which involuntary
	Syscalls   float64 // perf's raw_syscalls:sys_enter; -1 without perf
	Futex      float64 // futex calls
	FutexWake  float64 // of which FUTEX_WAKE_PRIVATE
	Writes     float64 // write(2)
	Reads      float64 // read(2)
	EpollWaits float64 // epoll_pwait
	Nanosleeps float64 // nanosleep (sysmon's polls, idle threads' steals)
	RedisCPU   float64 // µs of redis-server's user and system, when measured
}

// Measure watches the child for d while load runs, and returns its figures
// per operation; ops reads how many operations were made so far. perf
// counts system calls when it is there and allowed, over its own span
// (divided by the operations made in that span); else those fields are -1.
// rdb, when not nil, adds redis-server's CPU from INFO.
func (p *Proc) Measure(tb testing.TB, rdb *redis.Client, ops func() int64, d time.Duration) Figures {
	tb.Helper()
	perf := p.startPerf()
	perfOps := ops()
	redis0 := redisCPU(tb, rdb)
	cpu0, sys0, vol0, inv0 := p.sample(tb)
	n0 := ops()
	time.Sleep(d)
	cpu1, sys1, vol1, inv1 := p.sample(tb)
	n := float64(ops() - n0)
	if n == 0 {
		tb.Fatal("lowrate: no operation was made in the window")
	}
	f := Figures{
		CPU:       float64((cpu1 - cpu0).Microseconds()) / n,
		System:    float64((sys1 - sys0).Microseconds()) / n,
		Switches:  float64(vol1-vol0+inv1-inv0) / n,
		Preempted: float64(inv1-inv0) / n,
		RedisCPU:  float64((redisCPU(tb, rdb) - redis0).Microseconds()) / n,
	}
	f.Syscalls = -1
	if perf != nil {
		perf.stop(&f, float64(ops()-perfOps))
	}
	return f
}

// Report adds f to b's metrics.
func (f Figures) Report(b *testing.B) {
	b.ReportMetric(f.CPU, "cpu-µs/op")
	b.ReportMetric(f.System, "sys-µs/op")
	b.ReportMetric(f.Switches, "ctxsw/op")
	b.ReportMetric(f.Preempted, "preempt/op")
	if f.Syscalls >= 0 {
		b.ReportMetric(f.Syscalls, "syscalls/op")
		b.ReportMetric(f.Futex, "futex/op")
		b.ReportMetric(f.FutexWake, "futexwake/op")
		b.ReportMetric(f.Writes, "write/op")
		b.ReportMetric(f.Reads, "read/op")
		b.ReportMetric(f.EpollWaits, "epoll/op")
		b.ReportMetric(f.Nanosleeps, "nanosleep/op")
	}
	if f.RedisCPU > 0 {
		b.ReportMetric(f.RedisCPU, "redis-µs/op")
	}
}

// sample reads the child's CPU time (all, and in the kernel) and its
// threads' context switches.
func (p *Proc) sample(tb testing.TB) (cpu, sys time.Duration, vol, inv int64) {
	tb.Helper()
	cpu, sys, err := proc.CPU(p.Pid)
	if err != nil {
		tb.Fatal(err)
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", p.Pid))
	for _, t := range tasks {
		f, err := os.Open(t)
		if err != nil {
			continue // the thread exited
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			name, v, ok := strings.Cut(sc.Text(), ":")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch {
			case !ok:
			case name == "voluntary_ctxt_switches":
				vol += n
			case name == "nonvoluntary_ctxt_switches":
				inv += n
			}
		}
		f.Close()
	}
	return cpu, sys, vol, inv
}

func redisCPU(tb testing.TB, rdb *redis.Client) time.Duration {
	if rdb == nil {
		return 0
	}
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var s float64
	for _, line := range strings.Split(info, "\r\n") {
		name, v, _ := strings.Cut(line, ":")
		if name == "used_cpu_sys" || name == "used_cpu_user" {
			f, _ := strconv.ParseFloat(v, 64)
			s += f
		}
	}
	return time.Duration(s * float64(time.Second))
}

type perfStat struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// perfEvents are counted in this order; the second is filtered to
// FUTEX_WAKE_PRIVATE (1|128), what the Go runtime calls to wake a thread.
var perfEvents = []string{
	"-e", "raw_syscalls:sys_enter",
	"-e", "syscalls:sys_enter_futex", "--filter", "op==129",
	"-e", "syscalls:sys_enter_futex",
	"-e", "syscalls:sys_enter_write",
	"-e", "syscalls:sys_enter_read",
	"-e", "syscalls:sys_enter_epoll_pwait",
	"-e", "syscalls:sys_enter_nanosleep",
}

func (p *Proc) startPerf() *perfStat {
	path, err := exec.LookPath("perf")
	if err != nil {
		return nil
	}
	ps := &perfStat{}
	ps.cmd = exec.Command(path, append(append([]string{"stat", "-x", ","}, perfEvents...), "-p", strconv.Itoa(p.Pid))...)
	ps.cmd.Stderr = &ps.out
	if err := ps.cmd.Start(); err != nil {
		return nil
	}
	time.Sleep(200 * time.Millisecond) // perf attaches to each thread
	return ps
}

func (ps *perfStat) stop(f *Figures, n float64) {
	_ = ps.cmd.Process.Signal(syscall.SIGINT)
	_ = ps.cmd.Wait()
	var counts []float64
	for _, line := range strings.Split(ps.out.String(), "\n") {
		v, _, ok := strings.Cut(line, ",")
		if c, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
			counts = append(counts, float64(c)/n)
		}
	}
	if len(counts) != 7 {
		return // perf not allowed, or not all events exist
	}
	f.Syscalls, f.FutexWake, f.Futex, f.Writes, f.Reads, f.EpollWaits, f.Nanosleeps =
		counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6]
}
