package fcm

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/fcm/fcmtest"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// EmulatorChildEnv, set to a latency, makes the test binary an FCM emulator
// with that latency (and a tenth of it of jitter) that prints its endpoint
// and serves until its input closes: BenchmarkSenderCPU's FCM, in a process
// of its own so that the benchmark's CPU is the client's alone.
const EmulatorChildEnv = "HERALD_FCM_EMULATOR_CHILD"

// RunEmulatorChild serves as EmulatorChildEnv says, and reports whether it
// did.
func RunEmulatorChild() bool {
	v := os.Getenv(EmulatorChildEnv)
	if v == "" {
		return false
	}
	latency, err := time.ParseDuration(v)
	if err != nil {
		panic(err)
	}
	emu, err := fcmtest.New(fcmtest.Config{Latency: latency, Jitter: latency / 3, MaxRecords: 1000})
	if err != nil {
		panic(err)
	}
	if err := emu.Start(); err != nil {
		panic(err)
	}
	fmt.Println(emu.Endpoint())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return true
}

// startEmulatorChild starts the test binary as an emulator and returns its
// endpoint; the child ends at cleanup.
func startEmulatorChild(b *testing.B, latency time.Duration) string {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), EmulatorChildEnv+"="+latency.String())
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("emulator child: %v", err)
	}
	return line[:len(line)-1]
}

// syscalls is the process's read and write system calls so far
// (/proc/self/io's syscr + syscw).
func syscalls(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && (k == "syscr" || k == "syscw") {
			c, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			n += c
		}
	}
	return n
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSenderCPU measures what the worker pays FCM's client per push:
// the message's mapping, firebase-admin-go and net/http, with the FCM
// emulator (30 ms ± 10 ms, as FCM) in a child process so that this
// process's CPU is the client's own. Calls of 50 messages, 6 at once (300
// sends in flight, about the quota's 9,500 a second at FCM's latency);
// cpu-µs/push is the figure. platform=all is a message with the options of
// all three platforms, as a retry's; platform=android one with Android's
// only, as a registered device's. group says whether h2c's connections are
// groupConns, as they are in the worker.
//
//	go test -run '^$' -bench SenderCPU -benchtime 30000x ./fcm/
func BenchmarkSenderCPU(b *testing.B) {
	endpoint := startEmulatorChild(b, 30*time.Millisecond)
	env := &heraldv1.Envelope{Id: "01JDXAMPLE0000000000000000", UserId: "u", Event: "order", EventId: "42",
		Data: []byte(`{"order":42,"state":"filled"}`), ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))}
	for _, c := range []struct {
		platform string
		h2c      bool
		group    bool
	}{{"", false, false}, {"android", false, false}, {"", true, false}, {"android", true, false}, {"android", true, true}} {
		h2c := c.h2c
		name := "platform=" + cmp.Or(c.platform, "all") + "/h2c=" + strconv.FormatBool(h2c)
		if h2c {
			name += "/group=" + strconv.FormatBool(c.group)
		}
		b.Run(name, func(b *testing.B) {
			s, err := NewSender(b.Context(), ClientConfig{Project: "bench", Endpoint: endpoint, H2C: h2c, ungrouped: !c.group})
			if err != nil {
				b.Fatal(err)
			}
			const callers, chunk = 6, 50
			var next atomic.Int64
			var failed atomic.Int64
			run := func(n int) {
				next.Store(0)
				var wg sync.WaitGroup
				for range callers {
					wg.Go(func() {
						for {
							start := int(next.Add(chunk)) - chunk
							if start >= n {
								return
							}
							now := time.Now()
							msgs := make([]*messaging.Message, min(chunk, n-start))
							for k := range msgs {
								msgs[k] = message(env, "tok-"+strconv.Itoa(start+k), c.platform, now, DefaultMaxDataBytes)
							}
							ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
							resp, err := s.SendEach(ctx, msgs)
							cancel()
							if err != nil {
								failed.Add(int64(len(msgs)))
								continue
							}
							failed.Add(int64(resp.FailureCount))
						}
					})
				}
				wg.Wait()
			}
			run(2000) // connections up, stacks grown
			if n := failed.Load(); n > 0 {
				b.Fatal(errors.New(strconv.FormatInt(n, 10) + " sends failed while warming up"))
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0, t0, sys0 := cpuTime(b), time.Now(), syscalls(b)
			run(b.N)
			cpu, wall, sys := cpuTime(b)-cpu0, time.Since(t0), syscalls(b)-sys0
			b.StopTimer()
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d sends failed", n)
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/push")
			b.ReportMetric(float64(b.N)/wall.Seconds(), "pushes/s")
			b.ReportMetric(float64(sys)/float64(b.N), "rw-syscalls/push")
		})
	}
}
