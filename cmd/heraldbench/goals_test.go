package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// goalsByName runs evaluateGoals and indexes the rows by goal.
func goalsByName(t *testing.T, r *report) map[string]goalRow {
	t.Helper()
	out := map[string]goalRow{}
	for _, g := range evaluateGoals(r) {
		if _, dup := out[g.Goal]; dup {
			t.Errorf("goal %q twice", g.Goal)
		}
		out[g.Goal] = g
	}
	return out
}

func TestGoalsTable(t *testing.T) {
	t.Parallel()
	r := &report{}
	r.add("redismem", "filling, offline: redis-server CPU per notification", 10, "µs")
	r.add("redismem", "full histories, offline: redis-server CPU per notification", 12, "µs") // 1.2× filling: not met
	r.add("redismem", "full histories, online: redis-server CPU per notification", 11.5, "µs")
	r.add("redismem", "used_memory after 500000 to 5000 users", 130, "MiB")
	r.add("router", "redis-server CPU per notification", 30, "µs") // redismem's wins
	r.addVs("router", "Notify a second, against the no-op call", 8000, "/s", 16000, "no-op gRPC")
	r.addVs("router", "process CPU per notification (router, edge, client)", 34, "µs", 30, "no-op gRPC")
	r.addVs("router batch", "notifications a second, batches of 100, closed loop, 8 callers", 30000, "/s", 1e6, "pipelined PUBLISH")
	r.add("unicast", "connections held", 5000, "conns")
	r.addVs("unicast 1,000/s", "sent a second (at send time)", 1000, "/s", 1000, "target rate")
	r.addVs("unicast 1,000/s", "Notify→receive p50", 1.1, "ms", 1, "no-op gRPC same rate")
	r.addVs("unicast 1,000/s", "Notify→receive p99", 2.5, "ms", 1.5, "no-op gRPC same rate")
	r.addVs("unicast 10,000/s", "sent a second (at send time)", 8000, "/s", 10000, "target rate")
	r.addVs("unicast 10,000/s", "Notify→receive p99", 4, "ms", 3, "no-op gRPC same rate")
	r.add("poll vs push, 10000 clients", "push: events a second", 333, "/s")
	r.add("poll vs push, 10000 clients", "push: server CPU per event (streams held, events sent)", 530, "µs")
	r.add("poll vs push, 10000 clients", "CPU of polling ÷ CPU of push", 5.5, "×")
	r.add("idle", "connections held", 19681, "conns")
	r.add("idle", "edge RSS growth per connection", 2.0, "KiB") // at the bar: met
	r.add("idle h2c, 1 stream/conn", "streams held", 19900, "streams")
	r.add("idle h2c, 1 stream/conn", "streams the edge ended while held", 12, "streams")
	r.add("idle h2c, 1 stream/conn", "edge RSS growth per stream", 40, "KiB")
	r.add("idle h2c, 100 streams/conn", "streams held", 19900, "streams")
	r.add("idle h2c, 100 streams/conn", "edge RSS growth per stream", 7.5, "KiB")
	r.add("idle h2c, 10 streams/conn", "edge RSS growth per stream", 7.5, "KiB")
	r.add("idle h2c, 10 streams/conn", "streams the edge ended while held", 1, "streams") // not met, however cheap
	r.add("broadcast", "connections on the topic", 19600, "conns")
	r.addVs("broadcast", "delivered", 588000, "events", 588000, "expected")
	r.add("broadcast", "time to deliver one broadcast to all, worst", 262, "ms")
	r.add("scale", "lost", 0, "events")
	r.add("scale", "duplicated", 3, "events")
	r.add("scale", "p99", 12, "ms")
	r.add("offline", "pushes a second, worker draining the backlog (steady, after the first second)", 9600, "/s")
	r.add("offline", "429 QUOTA_EXCEEDED answers", 0, "answers")
	r.add("offline", "worker CPU while draining (steady)", 0.69, "core-s/s")
	r.add("offline", "worker CPU per push", 45, "µs")
	r.add("offline 1,000/s", "429 QUOTA_EXCEEDED answers", 2, "answers")
	r.add("offline 1,000/s", "Kafka hand-off p99 (router accepted → worker fetched)", 5.9, "ms")

	g := goalsByName(t, r)
	for _, tc := range []struct {
		goal, status string
		value        float64
		measured     string // in Measured, when not empty
	}{
		{"1 Redis CPU, online", goalMet, 11.5, ""},
		{"1 Redis CPU, offline", goalNotMet, 12, ""},
		{"2 Notify rate", goalMet, 0.5, "8,000/s"},
		{"2 process CPU", goalMet, 34, ""},
		{"3 batches", goalNotMet, 0.03, ""},
		{"4 p50 at 1k/s", goalMet, 1.1, "5,000 streams"},
		{"4 p99 at 1k/s", goalNotMet, 2.5, ""},
		{"4 p99 at 10k/s", goalMet, 4, "rate only 0.80 of target"},
		{"5 CPU per event", goalNotMet, 530, "333 events/s"},
		{"5 push vs poll", goalMet, 5.5, ""},
		{"6 HTTP/1.1", goalMet, 2, "19,681 streams"},
		{"6 HTTP/2, 1 stream/conn", goalNotMet, 40, "19,900 streams, 12 more ended by the edge"},
		{"6 HTTP/2, 100 streams/conn", goalMet, 7.5, ""},
		{"6 HTTP/2, 10 streams/conn", goalNotMet, 7.5, "1 more ended by the edge"},
		{"6 Redis memory", goalNotMet, 130, "after 500000 to 5000 users"},
		{"7 steady state", goalNotMet, 1.2, "10 µs filling"},
		{"8 broadcast", goalNotMet, 262, "worst of 30, 19,600 streams"},
		{"9 scale, lost", goalMet, 0, ""},
		{"9 scale, duplicated", goalNotMet, 3, ""},
		{"9 scale, p99", goalReported, 12, ""},
		{"9 scale, p50", goalNotRun, 0, ""},
		{"9 scale, edge CPU", goalNotRun, 0, ""},
		{"10 worker CPU", goalMet, 45, ""},
		{"10 worker rate", goalNotMet, 9600, "9,600/s on 0.69 core"},
		{"10 hand-off p99", goalMet, 5.9, ""},
		{"10 429s", goalNotMet, 2, ""},
	} {
		got, ok := g[tc.goal]
		if !ok {
			t.Errorf("no goal %q", tc.goal)
			continue
		}
		if got.Status != tc.status || diff(got.Value, tc.value) > 1e-9 || !strings.Contains(got.Measured, tc.measured) {
			t.Errorf("%s: %s, value %v, measured %q; want %s, %v, measured with %q", tc.goal, got.Status, got.Value, got.Measured,
				tc.status, tc.value, tc.measured)
		}
		if got.Status != goalNotRun && (got.Source == "" || got.Figure == "") {
			t.Errorf("%s: no source or figure: %+v", tc.goal, got)
		}
	}
	if f := g["2 Notify rate"].Figure; f != "Notify ÷ no-op gRPC = 0.5, goal ≥ 0.5" {
		t.Errorf("goal 2's figure %q", f)
	}
	if !strings.HasPrefix(g["1 Redis CPU, online"].Source, "redismem") {
		t.Errorf("goal 1 online read %q, want redismem's full histories before the router's", g["1 Redis CPU, online"].Source)
	}

	var out bytes.Buffer
	printGoals(&out, evaluateGoals(r))
	for name, row := range g {
		if !strings.Contains(out.String(), name) || !strings.Contains(out.String(), row.Bar) {
			t.Errorf("printed table lacks %q or its bar %q", name, row.Bar)
		}
	}
}

func diff(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}

// With no rows, every goal reads "not run"; a row without the baseline a
// ratio goal needs does not count as measured.
func TestGoalsNotRun(t *testing.T) {
	t.Parallel()
	rows := evaluateGoals(&report{})
	if len(rows) < 20 {
		t.Fatalf("%d goal rows, want every goal and sub-goal", len(rows))
	}
	var names []string
	for _, g := range rows {
		names = append(names, g.Goal)
		if g.Status != goalNotRun || g.Measured != "" {
			t.Errorf("%s: %s, measured %q; want not run", g.Goal, g.Status, g.Measured)
		}
	}
	for _, want := range []string{"1 Redis CPU, online", "6 HTTP/2", "9 scale, lost", "10 429s"} {
		if !slices.Contains(names, want) {
			t.Errorf("no row %q among %q", want, names)
		}
	}
	r := &report{}
	r.add("router", "Notify a second, against the no-op call", 8000, "/s") // no baseline
	for _, g := range evaluateGoals(r) {
		if g.Goal == "2 Notify rate" && g.Status != goalNotRun {
			t.Errorf("goal 2 without its baseline: %s", g.Status)
		}
	}
}

func TestGoalFlags(t *testing.T) {
	t.Parallel()
	c, err := parseFlags([]string{"-self", "-scenario", "goals"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"idle", "unicast", "router", "broadcast", "pollpush", "offline", "redismem"} {
		if !slices.Contains(c.scenarios, s) {
			t.Errorf("-scenario goals runs %q, lacks %s", c.scenarios, s)
		}
	}
	if c.conns != 5000 || c.broadcasts != 30 || !slices.Equal(c.idleH2, []int{1, 100}) {
		t.Errorf("-scenario goals: conns %d, broadcasts %d, idle-h2 %v; want 5000, 30, [1 100]", c.conns, c.broadcasts, c.idleH2)
	}
	c, _ = parseFlags([]string{"-self", "-quick", "-scenario", "goals,idle", "-conns", "7"}, &bytes.Buffer{})
	if c.conns != 7 || c.broadcasts != 3 || !slices.Equal(c.rates, []float64{1000, 10000}) || strings.Count(strings.Join(c.scenarios, ","), "idle") != 1 {
		t.Errorf("-quick -scenario goals,idle -conns 7: conns %d, broadcasts %d, scenarios %q", c.conns, c.broadcasts, c.scenarios)
	}
	for _, bad := range []string{"0", "251", "x", "1,-2"} {
		if _, err := parseFlags([]string{"-self", "-idle-h2", bad}, &bytes.Buffer{}); err == nil {
			t.Errorf("-idle-h2 %s accepted", bad)
		}
	}
}

// An h2c idle run holds its streams over HTTP/2: as many connections as
// the streams need, counted on this machine's sockets, not as the children
// say; and the goals table reads its figure.
func TestIdleH2(t *testing.T) {
	table, fig := runReport(t, "-self", "-redis", testRedis(t), "-scenario", "idle",
		"-idle-conns", "150", "-idle-h2", "1,50", "-per-child", "100", "-per-addr", "50",
		"-base-duration", "300ms", "-callers", "8")
	for _, tc := range []struct {
		sc    string
		conns float64
	}{{"idle h2c, 1 stream/conn", 150}, {"idle h2c, 50 streams/conn", 3}} {
		if v := fig[tc.sc+"|streams held"].Value; v != 150 {
			t.Errorf("%s: %v streams held, want 150", tc.sc, v)
		}
		if v, ok := fig[tc.sc+"|streams the edge ended while held"]; !ok || v.Value != 0 {
			t.Errorf("%s: %v streams ended by the edge (found %v), want 0", tc.sc, v.Value, ok)
		}
		if v, ok := fig[tc.sc+"|TCP connections to the edge (/proc/net/tcp)"]; !ok || v.Value != tc.conns {
			t.Errorf("%s: %v TCP connections (found %v), want %v", tc.sc, v.Value, ok, tc.conns)
		}
		if v := fig[tc.sc+"|edge goroutines per stream"].Value; v < 1 {
			t.Errorf("%s: %v goroutines per stream: an h2 stream keeps its handler's", tc.sc, v)
		}
	}
	for line := range strings.Lines(table) {
		if strings.HasPrefix(line, "6 HTTP/") && strings.Contains(line, goalNotRun) {
			t.Errorf("goal 6 not read: %s", line)
		}
	}
	if !strings.Contains(table, "6 HTTP/2, 50 streams/conn") {
		t.Error("the goals table lacks the HTTP/2 row of 50 streams a connection")
	}
}
