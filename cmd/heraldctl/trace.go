package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery/trail"
)

// traceCmd shows what is known of one notification: its trail in Redis and,
// with -kafka-brokers, its dead letters.
func traceCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	var rf daemon.Redis
	rf.Register(fs)
	var dl dlqFilter // the dead letters looked for
	dl.kafka.RegisterNamed(fs, "kafka-dead-letter-topic")
	// -kafka-brokers is trace's own: empty by default, as the dead-letter
	// topic is searched only when it is given (daemon's default is a broker).
	fs.StringVar(&dl.kafka.Brokers, "kafka-brokers", "", "also look for the notification in the dead-letter topic on these brokers")
	var (
		user    = fs.String("user", "", "the notification's user: a direct lookup instead of a scan of the keyspace")
		asJSON  = fs.Bool("json", false, "print JSON")
		timeout = fs.Duration("timeout", 30*time.Second, "time limit")
	)
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	if id == "" && fs.NArg() > 0 {
		id = fs.Arg(0)
	}
	if id == "" {
		return errors.New("usage: heraldctl trace ID [-user U] [-kafka-brokers B]")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rdb := rf.Client()
	defer rdb.Close()
	tr, err := trail.Find(ctx, rdb, rf.Prefix, *user, id)
	if err != nil && !errors.Is(err, trail.ErrNotKept) {
		return err
	}
	var dls []deadLetter
	if dl.kafka.Brokers != "" {
		dl.ids, dl.timeout = id, *timeout
		if dls, err = dl.read(ctx); err != nil {
			return err
		}
	}
	if tr.Fields == nil && len(dls) == 0 {
		return fmt.Errorf("%w; the dead-letter topic was %s", trail.ErrNotKept,
			map[bool]string{true: "searched too", false: "not searched (give -kafka-brokers)"}[dl.kafka.Brokers != ""])
	}
	if *asJSON {
		out := map[string]any{"id": id, "trail": tr.Fields}
		var letters []json.RawMessage
		for _, d := range dls {
			var b strings.Builder
			if err := printJSON(&b, []deadLetter{d}, false); err != nil {
				return err
			}
			letters = append(letters, json.RawMessage(strings.TrimSpace(b.String())))
		}
		out["deadLetters"] = letters
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	return printTrace(stdout, id, tr, dls)
}

// printTrace renders a trail for people: one line per fact, times as
// offsets from acceptance.
func printTrace(w io.Writer, id string, tr trail.Record, dls []deadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	f := tr.Fields
	accepted := tr.Time("accepted_ms")
	at := func(field string) string {
		t := tr.Time(field)
		if t.IsZero() {
			return "?"
		}
		if accepted.IsZero() {
			return t.UTC().Format(time.RFC3339Nano)
		}
		return "+" + t.Sub(accepted).Round(100*time.Microsecond).String()
	}
	fmt.Fprintf(tw, "notification\t%s\n", id)
	if f != nil {
		fmt.Fprintf(tw, "user\t%s\n", f["user"])
		fmt.Fprintf(tw, "accepted\t%s\n", accepted.UTC().Format(time.RFC3339Nano))
		route := f["route"]
		switch {
		case f["queued_ms"] != "":
			route = "push_queued (" + route + "; written to Kafka at " + at("queued_ms") + ")"
		case f["queue_error"] != "":
			route += " (Kafka refused it: " + f["queue_error"] + "; the caller got Unavailable)"
		case route == "online":
			route += " (published to " + f["subscribers"] + " edge subscriber(s))"
		}
		fmt.Fprintf(tw, "route\t%s\n", route)
		fmt.Fprintf(tw, "event id\t%s\n", f["event_id"])
		if c := f["correlation_id"]; c != "" {
			fmt.Fprintf(tw, "correlation id\t%s\n", c)
		}
		if t := f["trace_id"]; t != "" {
			fmt.Fprintf(tw, "trace id\t%s\n", t)
		}
		if n := f["sse_writes"]; n != "" {
			fmt.Fprintf(tw, "sse\twritten to %s connection(s), first at %s\n", n, at("sse_first_ms"))
		}
		if f["acked_ms"] != "" {
			fmt.Fprintf(tw, "ack\tacknowledged by the client at %s (no push)\n", at("acked_ms"))
		}
		if f["fell_back_ms"] != "" {
			fmt.Fprintf(tw, "ack\tnot acknowledged in time: fell back to a push at %s\n", at("fell_back_ms"))
		}
		if f["late_ack_ms"] != "" {
			fmt.Fprintf(tw, "ack\tacknowledged late, after the fallback, at %s\n", at("late_ack_ms"))
		}
		if f["fcm_sent_ms"] != "" {
			fmt.Fprintf(tw, "fcm\tpushed to %s device(s) at %s\n", f["fcm_devices"], at("fcm_sent_ms"))
		}
		if f["fcm_retry_ms"] != "" && f["fcm_dead_letter_ms"] == "" {
			fmt.Fprintf(tw, "fcm\tretry queued after attempt %s (%s), not before %s\n", f["fcm_attempts"], f["fcm_code"], at("fcm_retry_ms"))
		}
		if f["fcm_dead_letter_ms"] != "" {
			fmt.Fprintf(tw, "fcm\tdead-lettered (%s) at %s\n", f["fcm_code"], at("fcm_dead_letter_ms"))
		}
		if f["fcm_expired_ms"] != "" {
			fmt.Fprintf(tw, "fcm\texpired before its push (at %s)\n", at("fcm_expired_ms"))
		}
		if n := f["fcm_tokens_removed"]; n != "" {
			fmt.Fprintf(tw, "fcm\t%s dead token(s) removed\n", n)
		}
	} else {
		fmt.Fprintf(tw, "trail\tnone in Redis (older than the trace TTL)\n")
	}
	if f["trace_id"] == "" {
		// Without a trail, a dead letter's envelope still names the trace.
		for _, d := range dls {
			if t := traceID(d.DL.GetEnvelope().GetTraceparent()); t != "" {
				fmt.Fprintf(tw, "trace id\t%s\n", t)
				break
			}
		}
	}
	for _, d := range dls {
		fmt.Fprintf(tw, "dead letter\t%s, %d attempt(s), at %s (partition %d offset %d)\n", d.Code, d.DL.GetAttempts(),
			d.DL.GetDeadLetteredAt().AsTime().UTC().Format(time.RFC3339), d.Partition, d.Offset)
	}
	return tw.Flush()
}

// traceID is the trace id of a W3C traceparent ("00-<trace id>-<span
// id>-<flags>"), or "" when tp is not one.
func traceID(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[1]) != 32 {
		return ""
	}
	return parts[1]
}
