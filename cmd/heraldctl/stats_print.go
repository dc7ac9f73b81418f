package main

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Printing heraldctl stats' report.

func printStats(w io.Writer, rep statsReport) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "herald stats: rates per second over %s, %d endpoint(s)\n\n",
		duration(time.Duration(rep.IntervalSeconds*float64(time.Second))), len(rep.Endpoints))
	fmt.Fprintln(tw, "ENDPOINT\tROLE\tSTATUS")
	for _, ep := range rep.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ep.Addr, strings.Join(ep.Roles, ","), ep.Status)
	}
	// The sections are one block of cells, so that their columns align:
	// headings and blank lines have empty cells too.
	section := func(name string) { fmt.Fprintf(tw, "\t\t\n%s\t\t\n", name) }
	line := func(name, v string, by map[string]float64) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, v, breakdown(by))
	}
	fmt.Fprintln(tw)
	if r := rep.Router; r != nil {
		section("ROUTER")
		line("notify/s", num(r.Notify), r.NotifyByRoute)
		line("notify errors/s", num(r.NotifyErrors), r.NotifyErrorsCode)
		line("notify p99", seconds(r.NotifyP99), nil)
		line("redis errors/s", num(r.RedisErrors), nil)
		line("kafka errors/s", num(r.KafkaErrors), nil)
	}
	if e := rep.Edge; e != nil {
		section("SSE EDGE")
		line("connections open", num(e.ConnectionsOpen), nil)
		line("closes/s", num(e.Closes), e.ClosesByReason)
		line("refused/s", num(e.Refused), e.RefusedByCode)
		line("events written/s", num(e.EventsWritten), nil)
		line("delivery p99", seconds(e.DeliveryP99), nil)
		line("presence errors/s", num(e.PresenceErrors), nil)
	}
	if f := rep.Worker; f != nil {
		section("FCM WORKER")
		line("messages/s", num(f.Messages), f.MessagesByOutcome)
		line("retries/s", num(f.Retries), f.RetriesByCode)
		line("dead letters/s", num(f.DeadLetters), f.DeadLettersByCode)
		line("consumer lag", num(f.ConsumerLag), nil)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Drop the padding that empty last cells leave, and the blank line
	// that opens the sections.
	var out strings.Builder
	blank := 0
	for l := range strings.Lines(buf.String()) {
		l = strings.TrimRight(l, " \n")
		if l == "" {
			if blank++; blank > 1 {
				continue
			}
		} else {
			blank = 0
		}
		out.WriteString(l + "\n")
	}
	_, err := io.WriteString(w, out.String())
	return err
}

// breakdown renders the non-zero rates, the largest first.
func breakdown(by map[string]float64) string {
	keys := make([]string, 0, len(by))
	for k, v := range by {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(by[b], by[a]), strings.Compare(a, b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = orDash(k) + " " + num(by[k])
	}
	return strings.Join(parts, ", ")
}

// num renders a rate or a gauge with at most two decimals.
func num(v float64) string {
	if v != 0 && math.Abs(v) < 0.005 {
		return "<0.01"
	}
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64)
}

// seconds renders a latency, or "-" when nothing was observed.
func seconds(v *float64) string {
	if v == nil {
		return "-"
	}
	d := time.Duration(*v * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}
