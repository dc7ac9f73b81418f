package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// The goals table: issue 17's goals ("Hot path v2"), each read from the
// rows the scenarios already added to the report, never measured again.
// A goal whose scenario did not run reads "not run".

// Goal statuses.
const (
	goalMet      = "met"
	goalNotMet   = "not met"
	goalNotRun   = "not run"
	goalReported = "reported" // the goal asks for the figure, with no bar
)

// goalRow is one line of the goals table, as printed and as -json writes it.
type goalRow struct {
	Goal string `json:"goal"` // the goal's number and sub-goal, "4 p99 at 1k/s"
	Bar  string `json:"bar"`  // what the issue asks, "≤ 2 ms"
	// Measured is the figure with its conditions, "2.92 ms, 2,000 streams";
	// Figure is the figure as the goal states it, with the bar.
	Measured string  `json:"measured,omitempty"`
	Figure   string  `json:"figure,omitempty"`
	Value    float64 `json:"value"`
	// Pairs, RatioMin and RatioMax are the spread of a ratio measured in
	// alternating rounds (row's fields of the same names): Value is then
	// the median of the pairs' ratios.
	Pairs    int     `json:"pairs,omitempty"`
	RatioMin float64 `json:"ratio_min,omitempty"`
	RatioMax float64 `json:"ratio_max,omitempty"`
	Status   string  `json:"status"`
	Source   string  `json:"source,omitempty"` // scenario | figure read
}

// goalScenarios are the scenarios the goals table reads, in the order
// -scenario goals runs them; those this build does not have are left out.
var goalScenarios = []string{"idle", "unicast", "router", "broadcast", "pollpush", "offline", "redismem", "scale"}

// knownScenario says whether -scenario may name s.
func knownScenario(s string) bool {
	return slices.Contains(allScenarios, s) || slices.Contains(optionalScenarios, s) || s == "redismem" || s == "scale"
}

// find returns the first row of a scenario and figure, each matched whole,
// or as a prefix when it ends in "*".
func (r *report) find(scenario, figure string) (row, bool) {
	match := func(s, pattern string) bool {
		if p, ok := strings.CutSuffix(pattern, "*"); ok {
			return strings.HasPrefix(s, p)
		}
		return s == pattern
	}
	for _, rw := range r.Rows {
		if match(rw.Scenario, scenario) && match(rw.Figure, figure) {
			return rw, true
		}
	}
	return row{}, false
}

// findAny returns the first of the sources, each "scenario|figure", that
// the report has.
func (r *report) findAny(sources ...string) (row, bool) {
	for _, s := range sources {
		sc, fig, _ := strings.Cut(s, "|")
		if rw, ok := r.find(sc, fig); ok {
			return rw, true
		}
	}
	return row{}, false
}

// bar is a goal's threshold.
type bar struct {
	op    string // "≤", "≥" or "=" (reported rows have none)
	limit float64
	unit  string
}

func (b bar) String() string {
	if b.op == "" {
		return "report it"
	}
	s := b.op + " " + formatValue(b.limit)
	if b.unit != "" && b.unit != "×" {
		s += " " + b.unit
	} else if b.unit == "×" {
		s += "×"
	}
	return s
}

func (b bar) met(v float64) bool {
	switch b.op {
	case "≤":
		return v <= b.limit
	case "≥":
		return v >= b.limit
	case "=":
		return v == b.limit
	}
	return false
}

func source(rw row) string { return rw.Scenario + " | " + rw.Figure }

func unitOf(v float64, unit string) string {
	switch unit {
	case "":
		return formatValue(v)
	case "×", "/s":
		return formatValue(v) + unit
	}
	return formatValue(v) + " " + unit
}

// goalBuilder collects the rows.
type goalBuilder struct {
	rep  *report
	rows []goalRow
}

// value adds a goal judged on a row's value. what names the figure in the
// Figure column; context, when not empty, follows the value in Measured.
func (g *goalBuilder) value(goal, what string, b bar, rw row, ok bool, context string) {
	if !ok {
		g.rows = append(g.rows, goalRow{Goal: goal, Bar: b.String(), Status: goalNotRun})
		return
	}
	gr := goalRow{Goal: goal, Bar: b.String(), Value: rw.Value, Source: source(rw),
		Measured: unitOf(rw.Value, rw.Unit)}
	if context != "" {
		gr.Measured += ", " + context
	}
	gr.Figure = what + " = " + unitOf(rw.Value, rw.Unit)
	g.finish(&gr, b)
}

// ratio adds a goal judged on a row's ratio to its baseline; a ratio
// measured in pairs of rounds shows its spread.
func (g *goalBuilder) ratio(goal, what string, b bar, rw row, ok bool, context string) {
	if !ok || rw.Versus == "" {
		gr := goalRow{Goal: goal, Bar: b.String(), Status: goalNotRun}
		if ok {
			gr.Source, gr.Measured = source(rw), unitOf(rw.Value, rw.Unit)+", no baseline"
		}
		g.rows = append(g.rows, gr)
		return
	}
	gr := goalRow{Goal: goal, Bar: b.String(), Value: rw.Ratio, Source: source(rw),
		Measured: unitOf(rw.Value, rw.Unit)}
	if context != "" {
		gr.Measured += ", " + context
	}
	gr.Figure = fmt.Sprintf("%s = %.3g", what, rw.Ratio)
	if rw.Pairs > 0 {
		gr.Pairs, gr.RatioMin, gr.RatioMax = rw.Pairs, rw.RatioMin, rw.RatioMax
		gr.Figure += fmt.Sprintf(" (median of %d pairs, %.3g–%.3g)", rw.Pairs, rw.RatioMin, rw.RatioMax)
	}
	g.finish(&gr, b)
}

func (g *goalBuilder) finish(gr *goalRow, b bar) {
	gr.Figure += ", goal " + b.String()
	switch {
	case b.op == "":
		gr.Status, gr.Figure = goalReported, strings.TrimSuffix(gr.Figure, ", goal "+b.String())
	case b.met(gr.Value):
		gr.Status = goalMet
	default:
		gr.Status = goalNotMet
	}
	g.rows = append(g.rows, *gr)
}

// count is "N streams" from a row, or "" without it.
func (g *goalBuilder) count(scenario, figure, noun string) string {
	if rw, ok := g.rep.find(scenario, figure); ok {
		return formatValue(rw.Value) + " " + noun
	}
	return ""
}

// evaluateGoals reads issue 17's goals off the report's rows.
func evaluateGoals(r *report) []goalRow {
	g := &goalBuilder{rep: r}
	const us, ms = "µs", "ms"

	// 1. Redis CPU per notification: with full histories on a Redis of
	// its own (redismem) when it ran, else the router scenario's Redis.
	rw, ok := r.findAny("redismem|full histories, online: redis-server CPU per notification",
		"router|redis-server CPU per notification")
	g.value("1 Redis CPU, online", "Redis CPU per notification", bar{"≤", 12, us}, rw, ok, "")
	rw, ok = r.findAny("redismem|full histories, offline: redis-server CPU per notification",
		"router batch|redis-server CPU per notification to users offline")
	g.value("1 Redis CPU, offline", "Redis CPU per notification", bar{"≤", 8, us}, rw, ok, "")

	// 2. Unary Notify.
	rw, ok = r.find("router", "Notify a second, against the no-op call")
	g.ratio("2 Notify rate", "Notify ÷ no-op gRPC", bar{"≥", 0.5, ""}, rw, ok, "")
	rw, ok = r.findAny("router|process CPU per notification*", "router|router CPU per notification")
	g.value("2 process CPU", "process CPU per Notify", bar{"≤", 35, us}, rw, ok, "")

	// 3. Batches, online.
	rw, ok = r.find("router batch", "notifications a second, batches of*")
	g.ratio("3 batches", "NotifyBatch ÷ pipelined PUBLISH", bar{"≥", 0.10, ""}, rw, ok, "")

	// 4. Latency at 1,000/s over 5,000 streams, and at 10,000/s.
	streams := g.count("unicast", "connections held", "streams")
	rw, ok = r.find("unicast 1,000/s", "Notify→receive p50")
	g.ratio("4 p50 at 1k/s", "p50 ÷ no-op gRPC round trip", bar{"≤", 1.2, "×"}, rw, ok, withRate(r, "unicast 1,000/s", streams))
	rw, ok = r.find("unicast 1,000/s", "Notify→receive p99")
	g.value("4 p99 at 1k/s", "p99", bar{"≤", 2, ms}, rw, ok, withRate(r, "unicast 1,000/s", streams))
	rw, ok = r.find("unicast 10,000/s", "Notify→receive p99")
	g.value("4 p99 at 10k/s", "p99", bar{"≤", 5, ms}, rw, ok, withRate(r, "unicast 10,000/s", streams))

	// 5. Low rates.
	ctx := ""
	if ev, ok := r.find("poll vs push*", "push: events a second"); ok {
		ctx = formatValue(ev.Value) + " events/s"
	}
	rw, ok = r.find("poll vs push*", "push: server CPU per event*")
	g.value("5 CPU per event", "CPU per event, all processes and Redis", bar{"≤", 150, us}, rw, ok, ctx)
	rw, ok = r.find("poll vs push*", "CPU of polling ÷ CPU of push")
	g.value("5 push vs poll", "poll CPU ÷ push CPU", bar{"≥", 5, "×"}, rw, ok, "")

	// 6. Memory.
	rw, ok = r.find("idle", "edge RSS growth per connection")
	g.value("6 HTTP/1.1", "edge RSS per idle stream", bar{"≤", 2, "KiB"}, rw, ok, g.count("idle", "connections held", "streams"))
	h2 := false
	for _, rw := range r.Rows {
		if strings.HasPrefix(rw.Scenario, idleH2Scenario) && rw.Figure == "edge RSS growth per stream" {
			h2 = true
			per := strings.TrimPrefix(rw.Scenario, idleH2Scenario)
			ctx := g.count(rw.Scenario, "streams held", "streams")
			ended, _ := r.find(rw.Scenario, "streams the edge ended while held")
			if ended.Value > 0 {
				ctx += ", " + formatValue(ended.Value) + " more ended by the edge"
			}
			g.value("6 HTTP/2"+per, "edge RSS per idle stream", bar{"≤", 8, "KiB"}, rw, true, ctx)
			if ended.Value > 0 {
				// An idle stream the edge does not hold is not a cheap one.
				last := &g.rows[len(g.rows)-1]
				last.Status, last.Figure = goalNotMet, last.Figure+"; idle streams were ended"
			}
		}
	}
	if !h2 {
		g.value("6 HTTP/2", "", bar{"≤", 8, "KiB"}, row{}, false, "")
	}
	rw, ok = r.find("redismem", "used_memory after*")
	g.value("6 Redis memory", "used_memory", bar{"≤", 120, "MiB"}, rw, ok, strings.TrimPrefix(rw.Figure, "used_memory "))

	// 7. Steady state: the cost with every history full against the cost
	// while filling them. The issue gives no number; 1.1 is this table's.
	fill, okFill := r.find("redismem", "filling, offline: redis-server CPU per notification")
	full, okFull := r.find("redismem", "full histories, offline: redis-server CPU per notification")
	if okFill && okFull && fill.Value > 0 {
		full.Ratio, full.Versus = full.Value/fill.Value, "filling"
	}
	g.ratio("7 steady state", "Redis CPU, full ÷ filling histories", bar{"≤", 1.1, "×"}, full, okFill && okFull,
		"full histories, offline; "+unitOf(fill.Value, fill.Unit)+" filling")

	// 8. Broadcast.
	rw, ok = r.find("broadcast", "time to deliver one broadcast to all, worst")
	g.value("8 broadcast", "worst time to all streams", bar{"≤", 150, ms}, rw, ok, broadcastContext(r))

	// 9. Scale across 3 edge processes (the scale scenario).
	for _, f := range []struct {
		goal, fig string
		b         bar
	}{
		{"9 scale, lost", "lost", bar{"=", 0, ""}},
		{"9 scale, duplicated", "duplicated", bar{"=", 0, ""}},
		{"9 scale, p50", "p50", bar{}},
		{"9 scale, p99", "p99", bar{}},
		{"9 scale, edge CPU", "edge CPU per process", bar{}},
	} {
		rw, ok = r.find("scale", f.fig)
		g.value(f.goal, f.fig, f.b, rw, ok, "")
	}

	// 10. The FCM worker.
	rw, ok = r.find("offline", "worker CPU per push")
	g.value("10 worker CPU", "worker CPU per push", bar{"≤", 50, us}, rw, ok, "")
	g.workerRate()
	rw, ok = r.find("offline *", "Kafka hand-off p99*")
	g.value("10 hand-off p99", "hand-off p99", bar{"≤", 10, ms}, rw, ok, "")
	var n429 row
	for _, rw := range r.Rows {
		if (rw.Scenario == "offline" || strings.HasPrefix(rw.Scenario, "offline ")) && rw.Figure == "429 QUOTA_EXCEEDED answers" {
			if n429.Figure == "" {
				n429 = rw
				continue
			}
			n429.Value += rw.Value
			n429.Scenario = "offline*"
		}
	}
	g.value("10 429s", "429 answers", bar{"=", 0, ""}, n429, n429.Figure != "", "")
	return g.rows
}

// workerRate is goal 10's "≥ 9,500 pushes/s on ≤ 0.5 core": both hold.
func (g *goalBuilder) workerRate() {
	const goal = "10 worker rate"
	bars := "≥ 9,500/s on ≤ 0.5 core"
	rate, ok1 := g.rep.find("offline", "pushes a second, worker draining*")
	cores, ok2 := g.rep.find("offline", "worker CPU while draining*")
	if !ok1 || !ok2 {
		g.rows = append(g.rows, goalRow{Goal: goal, Bar: bars, Status: goalNotRun})
		return
	}
	gr := goalRow{Goal: goal, Bar: bars, Value: rate.Value, Source: source(rate) + "; " + cores.Figure,
		Measured: fmt.Sprintf("%s/s on %.2f core", formatValue(rate.Value), cores.Value)}
	gr.Figure = gr.Measured + ", goal " + bars
	gr.Status = goalNotMet
	if rate.Value >= 9500 && cores.Value <= 0.5 {
		gr.Status = goalMet
	}
	g.rows = append(g.rows, gr)
}

// withRate is a unicast run's conditions: the streams, and the rate
// reached when it fell short of the target.
func withRate(r *report, scenario, streams string) string {
	parts := []string{}
	if streams != "" {
		parts = append(parts, streams)
	}
	if rw, ok := r.find(scenario, "sent a second*"); ok && rw.Versus != "" && rw.Ratio < 0.95 {
		parts = append(parts, fmt.Sprintf("rate only %.2f of target", rw.Ratio))
	}
	return strings.Join(parts, ", ")
}

// broadcastContext is "worst of N, M streams".
func broadcastContext(r *report) string {
	conns, ok1 := r.find("broadcast", "connections on the topic")
	del, ok2 := r.find("broadcast", "delivered")
	if !ok1 || !ok2 || conns.Value == 0 || del.Ratio == 0 {
		return ""
	}
	n := del.Value / del.Ratio / conns.Value
	return fmt.Sprintf("worst of %s, %s streams", formatValue(n), formatValue(conns.Value))
}

// printGoals writes the goals table.
func printGoals(w io.Writer, rows []goalRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nissue 17 goals")
	t := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t, "goal\tbar\tmeasured\tas the goal states it\tstatus")
	for _, g := range rows {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", g.Goal, g.Bar, dash(g.Measured), dash(g.Figure), g.Status)
	}
	t.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
