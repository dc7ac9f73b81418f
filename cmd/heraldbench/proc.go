package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/herald-push/herald/cmd/internal/proc"
)

// procSample is one reading of a process's memory and CPU time.
type procSample struct {
	RSS int64         // resident set size, bytes (VmRSS)
	CPU time.Duration // user + system time
}

func readProc(pid int) (procSample, error) {
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.RSS = kb << 10
			}
		}
	}
	s.CPU, _, err = proc.CPU(pid)
	return s, err
}

// kernelSample is the kernel memory that grows with sockets: the
// unreclaimable slab (socket, inode, dentry, epoll and TCP objects) and the
// pages TCP buffers hold (/proc/net/sockstat "TCP: mem", in pages).
type kernelSample struct {
	SUnreclaim int64 // bytes
	TCPMem     int64 // bytes
	TCPInUse   int64
}

func readKernel() kernelSample {
	var k kernelSample
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "SUnreclaim:"); ok {
				if fs := strings.Fields(v); len(fs) > 0 {
					kb, _ := strconv.ParseInt(fs[0], 10, 64)
					k.SUnreclaim = kb << 10
				}
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for line := range strings.Lines(string(b)) {
			rest, ok := strings.CutPrefix(line, "TCP:")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			for i := 0; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseInt(f[i+1], 10, 64)
				switch f[i] {
				case "mem":
					k.TCPMem = v * int64(os.Getpagesize())
				case "inuse":
					k.TCPInUse = v
				}
			}
		}
	}
	return k
}

// openFiles is how many files this process has open.
func openFiles() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// startCPUProfile writes this process's CPU profile to path until stop is
// called; with no path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeHeapProfile writes this process's heap profile (in use and
// allocated) to path.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// heapAllocs is the number of heap objects this process has allocated so
// far: with -self, the edge's (and the router's) allocations.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
