package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/fcm"
)

// The offline scenario's FCM worker, a child process: the parent's handle
// on it, the line protocol between them, and the hand-off histogram it
// reports.

// workerChildFlag, as the first argument, makes heraldbench an FCM worker
// for the offline scenario: it reads a workerSpec line on its standard
// input, runs the worker, answers each further line with its hand-off
// histogram, and stops when its input closes.
const workerChildFlag = "-heraldbench-fcmworker"

type workerSpec struct {
	Brokers     []string
	Redis       string
	Prefix      string
	Endpoint    string
	Concurrency int
	Conns       int
	Quota       int
	H2C         bool
	Partitions  int
	// GOGC, when not 0, is the worker's GC percent.
	GOGC int
	// GOMAXPROCS, when not 0, is the worker's.
	GOMAXPROCS int
}

// buckets is a snapshot of a Prometheus histogram: upper bounds and
// cumulative counts, the last one +Inf.
type buckets struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
}

func (b buckets) minus(o buckets) buckets {
	out := buckets{Bounds: b.Bounds, Counts: make([]uint64, len(b.Counts))}
	for i := range b.Counts {
		out.Counts[i] = b.Counts[i]
		if i < len(o.Counts) {
			out.Counts[i] -= o.Counts[i]
		}
	}
	return out
}

// quantile interpolates within the bucket that holds q; past the last
// bound it returns the last bound.
func (b buckets) quantile(q float64) time.Duration {
	if len(b.Counts) == 0 || b.Counts[len(b.Counts)-1] == 0 {
		return 0
	}
	want := q * float64(b.Counts[len(b.Counts)-1])
	lo, prev := 0.0, uint64(0)
	for i, c := range b.Counts {
		if float64(c) >= want {
			if i >= len(b.Bounds) {
				return time.Duration(b.Bounds[len(b.Bounds)-1] * float64(time.Second))
			}
			frac := 0.0
			if c > prev {
				frac = (want - float64(prev)) / float64(c-prev)
			}
			return time.Duration((lo + frac*(b.Bounds[i]-lo)) * float64(time.Second))
		}
		if i < len(b.Bounds) {
			lo = b.Bounds[i]
		}
		prev = c
	}
	return time.Duration(math.Inf(1))
}

// workerChild is the parent's handle on the worker process.
type workerChild struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	pid  int
	once sync.Once
	err  error
}

func startWorkerChild(ctx context.Context, spec workerSpec) (*workerChild, error) {
	cmd, in, out, err := reexec(ctx, workerChildFlag)
	if err != nil {
		return nil, err
	}
	w := &workerChild{cmd: cmd, in: in, out: bufio.NewScanner(out), pid: cmd.Process.Pid}
	if err := json.NewEncoder(in).Encode(spec); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

func (w *workerChild) handoff() (buckets, error) {
	var b buckets
	if _, err := io.WriteString(w.in, "handoff\n"); err != nil {
		return b, err
	}
	if !w.out.Scan() {
		return b, fmt.Errorf("worker: no answer: %v", w.out.Err())
	}
	return b, json.Unmarshal(w.out.Bytes(), &b)
}

// stop closes the worker's input, which stops it, and waits for it.
func (w *workerChild) stop() error {
	w.once.Do(func() {
		w.in.Close()
		w.err = w.cmd.Wait()
	})
	return w.err
}

// runWorkerChild is the worker process.
func runWorkerChild(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	if !sc.Scan() {
		return errors.New("no spec")
	}
	var spec workerSpec
	if err := json.Unmarshal(sc.Bytes(), &spec); err != nil {
		return err
	}
	if spec.GOGC != 0 {
		debug.SetGCPercent(spec.GOGC)
	}
	if spec.GOMAXPROCS != 0 {
		runtime.GOMAXPROCS(spec.GOMAXPROCS)
	}
	stop, err := startCPUProfile(os.Getenv("HERALDBENCH_WORKER_CPUPROFILE"))
	if err != nil {
		return err
	}
	defer stop()
	if path := os.Getenv("HERALDBENCH_WORKER_MEMPROFILE"); path != "" {
		// Written when the worker stops: its allocations over the whole
		// run (alloc_space, alloc_objects) and what it holds at the end.
		defer func() {
			if err := writeHeapProfile(path); err != nil {
				fmt.Fprintln(os.Stderr, "heraldbench: worker heap profile:", err)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	rdb := daemon.NewRedis(spec.Redis, "")
	defer rdb.Close()
	devices, err := devices.New(rdb, devices.Config{Prefix: spec.Prefix})
	if err != nil {
		return err
	}
	sender, err := fcm.NewSender(ctx, fcm.ClientConfig{Project: "heraldbench", Endpoint: spec.Endpoint, Conns: spec.Conns, H2C: spec.H2C})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	w, err := fcm.New(fcm.Config{Kafka: queue.Config{Brokers: spec.Brokers}, RedisPrefix: spec.Prefix,
		Concurrency: spec.Concurrency, QuotaPerMinute: spec.Quota, SessionTimeout: time.Second},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var b buckets
		mfs, err := reg.Gather()
		if err != nil {
			return err
		}
		for _, mf := range mfs {
			if mf.GetName() != "herald_fcm_handoff_seconds" {
				continue
			}
			h := mf.GetMetric()[0].GetHistogram()
			for _, bk := range h.GetBucket() {
				b.Bounds = append(b.Bounds, bk.GetUpperBound())
				b.Counts = append(b.Counts, bk.GetCumulativeCount())
			}
			b.Counts = append(b.Counts, h.GetSampleCount())
		}
		if err := enc.Encode(b); err != nil {
			return err
		}
	}
	cancel()
	return <-done
}
