// Command fcm-emulator serves an emulator of the FCM HTTP v1 send API, for
// running Herald's offline path locally and in tests without Google: the
// real firebase-admin-go client sends to it, it records the messages, and
// errors, throttling and latency can be scripted over HTTP. See
// docs/fcm-emulator.md.
//
// Every flag can also be set through the environment: -addr as
// FCM_EMULATOR_ADDR, and so on.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/fcm/fcmtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fcm-emulator:", err)
		os.Exit(1)
	}
}

// run serves the emulator until ctx is done.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fcm-emulator", flag.ContinueOnError)
	var (
		addr      = fs.String("addr", fcmtest.DevAddr, "listen address")
		project   = fs.String("project", "herald-dev", "the project served; sends to another answer 403 (empty: any project)")
		latency   = fs.Duration("latency", 0, "delay added to every send")
		jitter    = fs.Duration("jitter", 0, "the latency varies by up to this much either way")
		rate      = fs.Float64("rate", 0, "sends a second beyond which FCM answers 429 QUOTA_EXCEEDED (0: unlimited)")
		burst     = fs.Int("burst", 0, "sends that may come at once under -rate (0: one second's worth)")
		maxRecs   = fs.Int("max-records", 100000, "messages and attempts kept for inspection; the oldest go first")
		logFormat = fs.String("log-format", "text", "log format: json or text")
		logLevel  = fs.String("log-level", "info", "log level: debug (a line per send), info, warn or error")
	)
	if err := daemon.ParseFlags(fs, args, "FCM_EMULATOR_"); err != nil {
		return err
	}
	log, _, err := daemon.NewLogger(os.Stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	emu, err := fcmtest.New(fcmtest.Config{
		Project: *project, Latency: *latency, Jitter: *jitter,
		Rate: *rate, Burst: *burst, MaxRecords: *maxRecs, Logger: log,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	base := "http://" + lis.Addr().String()
	log.Info("fcm emulator listening", slog.String("addr", lis.Addr().String()),
		slog.String("project", *project), slog.Duration("latency", *latency), slog.Float64("rate", *rate))
	shown := *project
	if shown == "" {
		shown = "any"
	}
	fmt.Fprintf(stdout, `FCM emulator on %[1]s (project: %[2]s)
  client:   option.WithEndpoint(%[3]q), option.WithoutAuthentication()
  messages: curl %[1]s/emulator/messages
  faults:   curl -d '{"token":"TOKEN","code":"UNREGISTERED"}' %[1]s/emulator/faults
`, base, shown, base+"/v1")

	// Close ends the latency waits in progress, so that shutdown is quick.
	stopClose := context.AfterFunc(ctx, func() { _ = emu.Close() })
	defer stopClose()
	err = daemon.Serve(ctx, lis, emu.Handler(), 5*time.Second)
	log.Info("fcm emulator stopped", slog.Int("accepted", emu.Count()))
	return err
}
