// Command heraldbench is Herald's load tool. It runs scenarios (idle
// connections, unicast at fixed rates, the router's highest rate, broadcast,
// and a soak run by hand) against a running deployment or against Herald
// started in its own process (-self), and measures, in the same run, the
// baselines the figures are compared to: pipelined Redis PUBLISH, a no-op
// gRPC call and an FCM emulator round trip. See docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		if err := runChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench child:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == scaleChildFlag {
		if err := runScaleChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench scale holder:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == workerChildFlag {
		if err := runWorkerChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "heraldbench worker:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "heraldbench:", err)
		}
		os.Exit(1)
	}
}

// run runs the benchmark: the table goes to stdout, progress to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if cfg.memProfile != "" {
		// Every allocation sampled: the profile divides by the streams.
		runtime.MemProfileRate = 1
	}
	stop, err := startCPUProfile(cfg.cpuProfile)
	if err != nil {
		return err
	}
	defer stop()
	b, err := newBench(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	// The soak runs alone when it is the only scenario: without the
	// baselines, which it does not compare to.
	var rep *report
	if len(cfg.scenarios) > 0 {
		rep, err = b.run(ctx)
	}
	var soak *soakResult
	if cfg.soak.on && err == nil {
		soak, err = b.soak(ctx)
		rep = b.rep
	}
	if cerr := b.close(); err == nil {
		err = cerr
	}
	if rep != nil {
		rep.Goals = evaluateGoals(rep)
		rep.print(stdout)
		soak.print(stdout)
		printGoals(stdout, rep.Goals)
		if cfg.jsonPath != "" {
			if werr := writeReport(cfg.jsonPath, rep, soak); err == nil {
				err = werr
			}
		}
	}
	return err
}
