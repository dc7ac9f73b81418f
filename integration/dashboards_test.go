package integration_test

// Tests of the operator documents: the Grafana dashboard, the Prometheus
// alerting rules and the runbook. They hold the documents to docs/metrics.md
// (every metric and label they use is documented, and used as its type
// allows), to each other (every alert has its runbook section), and to
// promtool: the rules load, the dashboard's queries parse, and each alert
// fires on the condition it describes and stays quiet otherwise.

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	dashboardPath = "../docs/grafana-dashboard.json"
	alertsPath    = "../docs/alerts.yml"
	runbookPath   = "../docs/runbook.md"
	metricsPath   = "../docs/metrics.md"
)

// TestDashboardGrafana checks the dashboard's structure, and every query
// against docs/metrics.md.
func TestDashboardGrafana(t *testing.T) {
	t.Parallel()
	cat := readCatalogue(t)
	d := readDashboard(t)

	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard needs a title and a uid; has %q, %q", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current Grafana schema (39)", d.SchemaVersion)
	}
	hasDatasource := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			hasDatasource = true
		}
	}
	if !hasDatasource {
		t.Error(`dashboard needs the templated variable "datasource" of type datasource, query "prometheus"`)
	}

	var rows []string
	ids := map[int]bool{}
	titles := map[string]bool{}
	queries := 0
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if !strings.Contains(p.Title, "?") {
			t.Errorf("%s: title the panel with the question it answers", where)
		}
		if titles[p.Title] {
			t.Errorf("%s: title used twice", where)
		}
		titles[p.Title] = true
		if !p.Datasource.isVariable() {
			t.Errorf("%s: datasource must be ${datasource}, is %+v", where, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if refs[q.RefID] || q.RefID == "" {
				t.Errorf("%s: refId %q empty or used twice", where, q.RefID)
			}
			refs[q.RefID] = true
			if !q.Datasource.isVariable() {
				t.Errorf("%s, query %s: datasource must be ${datasource}, is %+v", where, q.RefID, q.Datasource)
			}
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("%s, query %s: empty expr", where, q.RefID)
			}
			for _, problem := range cat.check(q.Expr) {
				t.Errorf("%s, query %s: %s\n\texpr: %s", where, q.RefID, problem, q.Expr)
			}
		}
	}
	wantRows := []string{
		"Is Herald healthy?",
		"Where did notifications go?",
		"Why are connections dropping?",
		"Why is FCM failing, and what is stuck?",
		"Do ack-or-push notifications reach the user?",
	}
	if !slices.Equal(rows, wantRows) {
		t.Errorf("rows are %q, want the on-call questions %q", rows, wantRows)
	}
	if queries == 0 {
		t.Fatal("the dashboard has no query")
	}

	// The layout: within the 24 columns, and no panel over another.
	top := d.Panels
	for i, p := range top {
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %d %q: gridPos %+v is off the 24-column grid", p.ID, p.Title, g)
		}
		for _, q := range top[:i] {
			if g.overlaps(q.GridPos) {
				t.Errorf("panels %d %q and %d %q overlap", q.ID, q.Title, p.ID, p.Title)
			}
		}
	}
}

// TestDashboardAlertRules checks each rule's fields, its metrics and labels
// against docs/metrics.md, and its runbook link.
func TestDashboardAlertRules(t *testing.T) {
	t.Parallel()
	cat := readCatalogue(t)
	rules := readAlertRules(t)
	anchors := runbookAnchors(t)

	seen := map[string]bool{}
	for _, r := range rules {
		where := fmt.Sprintf("%s (group %s)", r.Alert, r.Group)
		if !regexp.MustCompile(`^Herald[A-Za-z0-9]+$`).MatchString(r.Alert) {
			t.Errorf("%s: alert names are HeraldCamelCase", where)
		}
		if seen[r.Alert] {
			t.Errorf("%s: alert defined twice", where)
		}
		seen[r.Alert] = true
		if !regexp.MustCompile(`^[0-9]+[smh]$`).MatchString(r.For) {
			t.Errorf("%s: for is %q, want a duration such as 10m", where, r.For)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: labels.severity is %q, want critical or warning", where, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: annotations.%s is missing", where, a)
			}
		}
		url := r.Annotations["runbook_url"]
		if want := "docs/runbook.md#" + anchor(r.Alert); url != want {
			t.Errorf("%s: runbook_url is %q, want %q", where, url, want)
		}
		if _, frag, _ := strings.Cut(url, "#"); !anchors[frag] {
			t.Errorf("%s: runbook_url %q: docs/runbook.md has no heading with anchor %q", where, url, frag)
		}
		for _, problem := range cat.check(r.Expr) {
			t.Errorf("%s: %s\n\texpr: %s", where, problem, r.Expr)
		}
	}
	if len(rules) == 0 {
		t.Fatal("docs/alerts.yml has no alerting rule")
	}
}

// TestDashboardPromtoolCheck loads the rules with promtool, and the
// dashboard's queries too, as recording rules, so that a query Prometheus
// would not parse fails here.
func TestDashboardPromtoolCheck(t *testing.T) {
	t.Parallel()
	promtool := needPromtool(t)

	if out, err := exec.Command(promtool, "check", "rules", alertsPath).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", alertsPath, err, out)
	}

	// Grafana's interval variables become a plain range.
	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, p := range readDashboard(t).allPanels() {
		for _, q := range p.Targets {
			rules = append(rules, rule{fmt.Sprintf("dashboard:panel_%d:%s", p.ID, q.RefID), grafanaVars.Replace(q.Expr)})
		}
	}
	file := writeJSON(t, "dashboard-queries.json", map[string]any{
		"groups": []any{map[string]any{"name": "dashboard", "rules": rules}},
	})
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("the dashboard's queries do not parse: promtool check rules: %v\n%s", err, out)
	}
}

// promSeries is an input series of a promtool rule test: a series selector
// and its values in promtool's expanding notation ("0+60x30" is 0, 60, 120,
// ... at each interval).
type promSeries struct {
	Series string `json:"series"`
	Values string `json:"values"`
}

// alertCase is how one alert should behave. Every input is sampled each
// minute, and the rules are evaluated each minute up to at.
type alertCase struct {
	alert string
	at    string
	// labels of the firing alert besides alertname, alertstate and
	// severity.
	labels map[string]string
	fire   [][]promSeries // inputs on which the alert fires at at
	quiet  [][]promSeries // inputs on which it is not even pending at at
}

var alertCases = []alertCase{
	{
		alert: "HeraldRouterUnavailable", at: "15m",
		fire: [][]promSeries{{
			{`herald_router_notify_total{route="online",code="OK"}`, "0+600x30"},
			{`herald_router_notify_total{route="none",code="Unavailable"}`, "0+60x30"},
		}},
		quiet: [][]promSeries{{
			{`herald_router_notify_total{route="online",code="OK"}`, "0+600x30"},
			{`herald_router_notify_total{route="none",code="Unavailable"}`, "0+3x30"},
		}},
	},
	{
		alert: "HeraldRouterKafkaErrors", at: "20m",
		fire: [][]promSeries{{{`herald_router_kafka_errors_total`, "0+30x30"}}},
		// One burst of errors, then none: it does not last 10 minutes.
		quiet: [][]promSeries{{{`herald_router_kafka_errors_total`, "0 5+0x29"}}},
	},
	{
		alert: "HeraldNoEdges", at: "10m",
		fire: [][]promSeries{{{`herald_router_notify_total{route="push_queued",code="OK"}`, "0+60x20"}}},
		quiet: [][]promSeries{{
			{`herald_router_notify_total{route="online",code="OK"}`, "0+60x20"},
			{`herald_sse_connections_open{instance="edge-1"}`, "0+0x20"},
		}},
	},
	{
		alert: "HeraldNoOpenConnections", at: "35m",
		fire: [][]promSeries{{
			{`herald_sse_connections_open{instance="edge-1"}`, "0+0x40"},
			{`herald_sse_connections_open{instance="edge-2"}`, "0+0x40"},
			{`herald_router_notify_total{route="push_queued",code="OK"}`, "0+60x40"},
		}},
		quiet: [][]promSeries{
			{ // connections, and traffic
				{`herald_sse_connections_open{instance="edge-1"}`, "0+0x40"},
				{`herald_sse_connections_open{instance="edge-2"}`, "3+0x40"},
				{`herald_router_notify_total{route="online",code="OK"}`, "0+60x40"},
			},
			{ // a quiet hour: no connection, and no notification either
				{`herald_sse_connections_open{instance="edge-1"}`, "0+0x40"},
				{`herald_router_notify_total{route="push_queued",code="OK"}`, "100+0x40"},
			},
		},
	},
	{
		alert: "HeraldSSEDeliveryLatencyHigh", at: "20m",
		// 10% of deliveries take between 250ms and 500ms.
		fire: [][]promSeries{{
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.1"}`, "0+90x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.25"}`, "0+90x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.5"}`, "0+100x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="+Inf"}`, "0+100x30"},
		}},
		quiet: [][]promSeries{{
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.1"}`, "0+100x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.25"}`, "0+100x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="0.5"}`, "0+100x30"},
			{`herald_sse_delivery_latency_seconds_bucket{instance="edge-1",le="+Inf"}`, "0+100x30"},
		}},
	},
	{
		alert: "HeraldSSEAbnormalCloses", at: "30m", labels: map[string]string{"reason": "slow_consumer"},
		fire: [][]promSeries{{
			{`herald_sse_connections_closed_total{instance="edge-1",reason="slow_consumer"}`, "0+60x40"},
			{`herald_sse_connections_closed_total{instance="edge-1",reason="write_error"}`, "0+0x40"},
			{`herald_sse_connections_closed_total{instance="edge-1",reason="client_closed"}`, "0+600x40"},
		}},
		quiet: [][]promSeries{
			{ // a high share, but a handful of closes
				{`herald_sse_connections_closed_total{instance="edge-1",reason="slow_consumer"}`, "0+1x40"},
				{`herald_sse_connections_closed_total{instance="edge-1",reason="client_closed"}`, "0+5x40"},
			},
			{ // many closes, but a small share
				{`herald_sse_connections_closed_total{instance="edge-1",reason="write_error"}`, "0+60x40"},
				{`herald_sse_connections_closed_total{instance="edge-1",reason="client_closed"}`, "0+6000x40"},
			},
		},
	},
	{
		alert: "HeraldSSEBrokerLost", at: "5m", labels: map[string]string{"instance": "edge-2"},
		fire: [][]promSeries{{
			{`herald_sse_connections_closed_total{instance="edge-1",reason="broker_lost"}`, "0+0x10"},
			{`herald_sse_connections_closed_total{instance="edge-2",reason="broker_lost"}`, "0 0 0 20+0x7"},
		}},
		quiet: [][]promSeries{{
			{`herald_sse_connections_closed_total{instance="edge-1",reason="broker_lost"}`, "0+0x10"},
			{`herald_sse_connections_closed_total{instance="edge-1",reason="client_closed"}`, "0+60x10"},
		}},
	},
	{
		alert: "HeraldSSERedisChannelsOrphaned", at: "6m", labels: map[string]string{"instance": "edge-2"},
		fire: [][]promSeries{{
			{`herald_sse_redis_orphaned_channels{instance="edge-1"}`, "0+0x10"},
			{`herald_sse_redis_orphaned_channels{instance="edge-2"}`, "0 0 40 40 38 41 41 40 40 40 40"},
		}},
		quiet: [][]promSeries{{ // a slot moved: a blip, resubscribed within the minute
			{`herald_sse_redis_orphaned_channels{instance="edge-1"}`, "0 0 0 12 0 0 0 0 0 0 0"},
			{`herald_sse_redis_orphaned_channels{instance="edge-2"}`, "0+0x10"},
		}},
	},
	{
		alert: "HeraldFCMFailureRatioHigh", at: "30m",
		fire: [][]promSeries{{
			{`herald_fcm_messages_total{outcome="sent"}`, "0+600x40"},
			{`herald_fcm_messages_total{outcome="quota_exceeded"}`, "0+300x40"},
			{`herald_fcm_messages_total{outcome="duplicate"}`, "0+6000x40"},
		}},
		quiet: [][]promSeries{
			{ // skipped duplicates are no failures
				{`herald_fcm_messages_total{outcome="sent"}`, "0+60x40"},
				{`herald_fcm_messages_total{outcome="duplicate"}`, "0+600x40"},
			},
			{ // a few failures out of many
				{`herald_fcm_messages_total{outcome="sent"}`, "0+600x40"},
				{`herald_fcm_messages_total{outcome="unregistered"}`, "0+30x40"},
			},
			{ // half fail, but hardly anything is sent
				{`herald_fcm_messages_total{outcome="sent"}`, "0+2x40"},
				{`herald_fcm_messages_total{outcome="unavailable"}`, "0+2x40"},
			},
		},
	},
	{
		alert: "HeraldFCMDeadLettersGrowing", at: "35m", labels: map[string]string{"code": "QUOTA_EXCEEDED"},
		fire: [][]promSeries{{
			{`herald_fcm_dead_letters_total{code="QUOTA_EXCEEDED"}`, "0+1x40"},
			{`herald_fcm_dead_letters_total{code="NO_DEVICE"}`, "0+100x40"},
		}},
		quiet: [][]promSeries{{
			{`herald_fcm_dead_letters_total{code="NO_DEVICE"}`, "0+100x40"},
			{`herald_fcm_dead_letters_total{code="UNREGISTERED"}`, "0+10x40"},
			{`herald_fcm_dead_letters_total{code="INTERNAL"}`, "0+0.2x40"},
		}},
	},
	{
		alert: "HeraldFCMConsumerLagHigh", at: "15m",
		labels: map[string]string{"topic": "herald.offline", "partition": "3"},
		fire: [][]promSeries{{
			{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "10+0x20"},
			{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="3"}`, "20000+0x20"},
		}},
		quiet: [][]promSeries{{
			{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "500+0x20"},
			// Retries wait for their time on their own topic.
			{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.fcm.retry",partition="0"}`, "50000+0x20"},
		}},
	},
	{
		alert: "HeraldFCMConsumerLagGrowing", at: "40m",
		labels: map[string]string{"topic": "herald.offline", "partition": "0"},
		fire: [][]promSeries{{
			{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "1000+100x50"},
		}},
		quiet: [][]promSeries{
			{{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "5000+0x50"}},
			{{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "200+10x50"}},
			{{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "9000-100x50"}},
		},
	},
	{
		alert: "HeraldFCMWorkerStalled", at: "25m",
		fire: [][]promSeries{
			{ // the router queues pushes, and no worker reports at all
				{`herald_router_notify_total{route="push_queued",code="OK"}`, "0+60x30"},
			},
			{ // a worker has a backlog, and finishes nothing
				{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "500+0x30"},
				{`herald_fcm_notifications_total{instance="worker-1",outcome="sent"}`, "100+0x30"},
			},
		},
		quiet: [][]promSeries{
			{
				{`herald_router_notify_total{route="push_queued",code="OK"}`, "0+60x30"},
				{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "20+0x30"},
				{`herald_fcm_notifications_total{instance="worker-1",outcome="sent"}`, "0+60x30"},
			},
			{ // nothing to push
				{`herald_router_notify_total{route="online",code="OK"}`, "0+60x30"},
				{`herald_fcm_consumer_lag_messages{instance="worker-1",topic="herald.offline",partition="0"}`, "0+0x30"},
			},
		},
	},
}

// TestDashboardAlertsFire runs every alert through promtool's rule tests: it
// must fire on the inputs of its case, with the labels the runbook expects,
// and stay quiet on the others. Every alert needs a case.
func TestDashboardAlertsFire(t *testing.T) {
	t.Parallel()
	promtool := needPromtool(t)
	severity := map[string]string{}
	for _, r := range readAlertRules(t) {
		severity[r.Alert] = r.Labels["severity"]
	}
	rulesFile, err := filepath.Abs(alertsPath)
	if err != nil {
		t.Fatal(err)
	}

	type sample struct {
		Labels string  `json:"labels"`
		Value  float64 `json:"value"`
	}
	type exprTest struct {
		Expr       string   `json:"expr"`
		EvalTime   string   `json:"eval_time"`
		ExpSamples []sample `json:"exp_samples"`
	}
	type group struct {
		Name           string       `json:"name"`
		Interval       string       `json:"interval"`
		InputSeries    []promSeries `json:"input_series"`
		PromQLExprTest []exprTest   `json:"promql_expr_test"`
	}
	var groups []group
	tested := map[string]bool{}
	for _, c := range alertCases {
		sev, ok := severity[c.alert]
		if !ok {
			t.Errorf("case for %s: docs/alerts.yml has no such alert", c.alert)
			continue
		}
		if len(c.fire) == 0 || len(c.quiet) == 0 {
			t.Errorf("case for %s: needs inputs on which it fires and inputs on which it does not", c.alert)
		}
		tested[c.alert] = true
		labels := map[string]string{"alertname": c.alert, "alertstate": "firing", "severity": sev}
		maps.Copy(labels, c.labels)
		var want []string
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			want = append(want, k+"="+strconv.Quote(labels[k]))
		}
		firing := exprTest{
			Expr:       fmt.Sprintf(`ALERTS{alertname=%q,alertstate="firing"}`, c.alert),
			EvalTime:   c.at,
			ExpSamples: []sample{{Labels: "ALERTS{" + strings.Join(want, ",") + "}", Value: 1}},
		}
		for i, in := range c.fire {
			groups = append(groups, group{fmt.Sprintf("%s fires (case %d)", c.alert, i+1), "1m", in, []exprTest{firing}})
		}
		for i, in := range c.quiet {
			quiet := exprTest{Expr: fmt.Sprintf(`ALERTS{alertname=%q}`, c.alert), EvalTime: c.at, ExpSamples: []sample{}}
			groups = append(groups, group{fmt.Sprintf("%s stays quiet (case %d)", c.alert, i+1), "1m", in, []exprTest{quiet}})
		}
	}
	for a := range severity {
		if !tested[a] {
			t.Errorf("%s has no case in alertCases: add inputs on which it fires and on which it stays quiet", a)
		}
	}
	file := writeJSON(t, "alerts-test.json", map[string]any{
		"rule_files":          []string{rulesFile},
		"evaluation_interval": "1m",
		"tests":               groups,
	})
	out, err := exec.Command(promtool, "test", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestDashboardRunbook checks the runbook: a section for each alert and an
// alert for each alert section, the sections every on-call engineer needs,
// its own links, the metrics it names, and the flags of the commands it
// shows.
func TestDashboardRunbook(t *testing.T) {
	t.Parallel()
	cat := readCatalogue(t)
	anchors := runbookAnchors(t)
	src, err := os.ReadFile(runbookPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(src)

	alerts := map[string]bool{}
	for _, r := range readAlertRules(t) {
		alerts[r.Alert] = true
	}
	for _, h := range regexp.MustCompile(`(?m)^## (Herald\w*)\s*$`).FindAllStringSubmatch(doc, -1) {
		if !alerts[h[1]] {
			t.Errorf("runbook section %q: docs/alerts.yml has no such alert", h[1])
		}
	}
	for _, a := range []string{"first-five-minutes", "replaying-dead-letters-safely"} {
		if !anchors[a] {
			t.Errorf("runbook needs a section with anchor #%s", a)
		}
	}
	for _, l := range regexp.MustCompile(`\]\(#([^)]+)\)`).FindAllStringSubmatch(doc, -1) {
		if !anchors[l[1]] {
			t.Errorf("runbook links to #%s, which is no heading of it", l[1])
		}
	}

	// Herald's metrics by name, or by a prefix as in grep -E '^herald_fcm_'.
	for _, name := range regexp.MustCompile(`herald_(?:router|sse|fcm)_[a-z_]*`).FindAllString(doc, -1) {
		if !cat.isSeriesPrefix(name) {
			t.Errorf("runbook names %s, which is no metric (or prefix of one) in docs/metrics.md", name)
		}
	}

	// Flags: those of the binaries, in `-flag` spans, must exist somewhere
	// under cmd/; those on a heraldctl command line must be that command's.
	binFlags := sourceFlags(t)
	for _, m := range regexp.MustCompile("`(-[a-z][a-z0-9-]*)[^`]*`").FindAllStringSubmatch(doc, -1) {
		if !binFlags[m[1][1:]] {
			t.Errorf("runbook mentions flag %s, which no command under cmd/ defines", m[1])
		}
	}
	ctl := heraldctlFlags(t)
	for _, line := range heraldctlLines(doc) {
		used := lineFlag.FindAllStringSubmatch(line, -1)
		if len(used) == 0 {
			continue // commands without flags, such as heraldctl edges
		}
		// The command is the words before the first flag or argument:
		// "dlq ls", "replay".
		var cmd []string
		for _, w := range strings.Fields(line)[1:] {
			if !subcommand.MatchString(w) {
				break
			}
			cmd = append(cmd, w)
		}
		flags, err := ctl(cmd)
		if err != nil {
			t.Errorf("runbook: %q: %v", line, err)
			continue
		}
		for _, f := range used {
			if !flags[f[1]] {
				t.Errorf("runbook: %q: heraldctl %s has no flag -%s", line, strings.Join(cmd, " "), f[1])
			}
		}
	}
}

var (
	lineFlag   = regexp.MustCompile(`(?:^|\s)-([a-z][a-z0-9-]*)`)
	subcommand = regexp.MustCompile(`^[a-z]+$`)
	codeSpan   = regexp.MustCompile("`(heraldctl [^`]*)`")
)

// ---- docs/metrics.md

// docMetric is one metric of docs/metrics.md.
type docMetric struct {
	name, typ string
	labels    []string
	// values are the code spans of the metric's meaning: the documented
	// values of its labels.
	values map[string]bool
}

// catalogue is docs/metrics.md, by metric name.
type catalogue map[string]*docMetric

func readCatalogue(t *testing.T) catalogue {
	t.Helper()
	src, err := os.ReadFile(metricsPath)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(herald_[a-z_]+)` \\| (counter|gauge|histogram) \\|([^|]*)\\| (.*) \\|$")
	code := regexp.MustCompile("`([^`]+)`")
	reason := regexp.MustCompile("^\\| `([a-z_]+)` \\|")
	cat := catalogue{}
	var reasons []string
	inReasons := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "#") {
			inReasons = strings.TrimSpace(line) == "### Close reasons"
		}
		if strings.HasPrefix(line, "| `herald_") && !row.MatchString(line) {
			t.Fatalf("docs/metrics.md: a metric row this test cannot read (| `name` | type | labels | meaning |): %s", line)
		}
		if m := row.FindStringSubmatch(line); m != nil {
			d := &docMetric{name: m[1], typ: m[2], values: map[string]bool{}}
			for _, l := range code.FindAllStringSubmatch(m[3], -1) {
				d.labels = append(d.labels, l[1])
			}
			for _, v := range code.FindAllStringSubmatch(m[4], -1) {
				d.values[v[1]] = true
			}
			cat[d.name] = d
		} else if m := reason.FindStringSubmatch(line); inReasons && m != nil {
			reasons = append(reasons, m[1])
		}
	}
	closed := cat["herald_sse_connections_closed_total"]
	if closed == nil || len(reasons) == 0 {
		t.Fatal("docs/metrics.md: herald_sse_connections_closed_total or the close reasons table not found")
	}
	for _, r := range reasons {
		closed.values[r] = true
	}
	return cat
}

// resolve finds the documented metric of a series name: the metric itself,
// or a histogram's _bucket, _sum or _count series.
func (c catalogue) resolve(series string) (m *docMetric, suffix string) {
	if m := c[series]; m != nil {
		return m, ""
	}
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if m := c[strings.TrimSuffix(series, s)]; m != nil && m.typ == "histogram" && strings.HasSuffix(series, s) {
			return m, s
		}
	}
	return nil, ""
}

// isSeriesPrefix reports whether p starts the name of a series Herald
// exposes.
func (c catalogue) isSeriesPrefix(p string) bool {
	for name, m := range c {
		names := []string{name}
		if m.typ == "histogram" {
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		}
		for _, n := range names {
			if strings.HasPrefix(n, p) {
				return true
			}
		}
	}
	return false
}

// Labels of a closed set, whose values docs/metrics.md lists, so that a typo
// in a matcher is caught. The other labels' values are open (gRPC and FCM
// codes, topics, partitions).
var closedLabels = map[string]bool{"route": true, "outcome": true, "reason": true, "change": true}

// Labels Prometheus adds to every scraped series.
var targetLabels = map[string]bool{"instance": true, "job": true}

var (
	metricName   = regexp.MustCompile(`herald_[a-z_]+`)
	selector     = regexp.MustCompile(`(herald_[a-z_]+)\s*\{([^}]*)\}`)
	matcher      = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	grouping     = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	simpleRegexp = regexp.MustCompile(`^[A-Za-z0-9_.]+(\|[A-Za-z0-9_.]+)*$`)
)

// check lists what is wrong in a PromQL expression against docs/metrics.md:
// undocumented metrics, labels and label values, and metrics used against
// their type (a counter outside rate or increase, a gauge inside one, a
// histogram's buckets outside histogram_quantile).
func (c catalogue) check(expr string) []string {
	var problems []string
	labelsHere := map[string]bool{"le": true}
	maps.Copy(labelsHere, targetLabels)
	for _, loc := range metricName.FindAllStringIndex(expr, -1) {
		series := expr[loc[0]:loc[1]]
		m, suffix := c.resolve(series)
		if m == nil {
			problems = append(problems, fmt.Sprintf("%s is not in docs/metrics.md", series))
			continue
		}
		for _, l := range m.labels {
			labelsHere[l] = true
		}
		before := strings.TrimRight(expr[:loc[0]], " \t\n")
		inRate := strings.HasSuffix(before, "rate(") || strings.HasSuffix(before, "increase(")
		switch {
		case m.typ == "histogram" && suffix == "":
			problems = append(problems, fmt.Sprintf("%s is a histogram: use its _bucket, _sum or _count series", series))
		case suffix == "_bucket" && !strings.Contains(expr, "histogram_quantile("):
			problems = append(problems, fmt.Sprintf("%s: buckets go through histogram_quantile", series))
		case (m.typ == "counter" || suffix != "") && !inRate && !strings.HasSuffix(before, "absent("):
			problems = append(problems, fmt.Sprintf("%s is a counter: use it in rate() or increase()", series))
		case m.typ == "gauge" && inRate:
			problems = append(problems, fmt.Sprintf("%s is a gauge: rate() and increase() are for counters", series))
		}
	}
	for _, sel := range selector.FindAllStringSubmatch(expr, -1) {
		m, suffix := c.resolve(sel[1])
		if m == nil {
			continue
		}
		for _, mt := range matcher.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := mt[1], mt[2], mt[3]
			switch {
			case targetLabels[label], label == "le" && suffix == "_bucket":
				continue
			case !slices.Contains(m.labels, label):
				problems = append(problems, fmt.Sprintf("%s has no label %q (docs/metrics.md: %q)", m.name, label, m.labels))
				continue
			case !closedLabels[label]:
				continue
			}
			values := []string{value}
			if op == "=~" || op == "!~" {
				if !simpleRegexp.MatchString(value) {
					continue
				}
				values = strings.Split(value, "|")
			}
			for _, v := range values {
				if !m.values[v] {
					problems = append(problems, fmt.Sprintf("%s{%s}: %q is not a documented value of %s", m.name, label, v, label))
				}
			}
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !labelsHere[l] {
				problems = append(problems, fmt.Sprintf("groups by %q, which no metric of the expression has", l))
			}
		}
	}
	return problems
}

// ---- docs/grafana-dashboard.json

type grafanaDashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	GridPos    gridPos            `json:"gridPos"`
	Targets    []struct {
		Datasource *grafanaDatasource `json:"datasource"`
		Expr       string             `json:"expr"`
		RefID      string             `json:"refId"`
	} `json:"targets"`
	// Panels are those of a collapsed row.
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func (d *grafanaDatasource) isVariable() bool {
	return d != nil && d.Type == "prometheus" && d.UID == "${datasource}"
}

type gridPos struct {
	X int `json:"x"`
	Y int `json:"y"`
	W int `json:"w"`
	H int `json:"h"`
}

func (g gridPos) overlaps(o gridPos) bool {
	return g.X < o.X+o.W && o.X < g.X+g.W && g.Y < o.Y+o.H && o.Y < g.Y+g.H
}

func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	src, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(src, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels lists the panels, rows included, and the panels of collapsed
// rows after their row.
func (d grafanaDashboard) allPanels() []grafanaPanel {
	var out []grafanaPanel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// ---- docs/alerts.yml

type alertRule struct {
	Group, Alert, Expr, For string
	Labels, Annotations     map[string]string
}

// readAlertRules reads docs/alerts.yml. The module has no YAML library, so it
// goes through parseYAMLSubset, which knows the part of YAML a rule file
// needs and refuses the rest; promtool checks the file in full.
func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	src, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := parseYAMLSubset(string(src))
	if err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: "+format, append([]any{alertsPath}, args...)...)
	}
	top, ok := doc.(map[string]any)
	if !ok {
		fail("not a mapping")
	}
	groups, ok := top["groups"].([]any)
	if !ok || len(top) != 1 {
		fail("want one key, groups, holding a list")
	}
	str := func(m map[string]any, k string) string {
		s, _ := m[k].(string)
		return s
	}
	strs := func(m map[string]any, k string) map[string]string {
		out := map[string]string{}
		sub, _ := m[k].(map[string]any)
		for k, v := range sub {
			out[k], _ = v.(string)
		}
		return out
	}
	var rules []alertRule
	for _, g := range groups {
		gm, ok := g.(map[string]any)
		if !ok || str(gm, "name") == "" {
			fail("each group needs a name")
		}
		rs, ok := gm["rules"].([]any)
		if !ok {
			fail("group %s: rules is not a list", str(gm, "name"))
		}
		for _, r := range rs {
			rm, ok := r.(map[string]any)
			if !ok || str(rm, "alert") == "" {
				fail("group %s: every rule here is an alerting rule with a name", str(gm, "name"))
			}
			rules = append(rules, alertRule{
				Group: str(gm, "name"), Alert: str(rm, "alert"), Expr: str(rm, "expr"), For: str(rm, "for"),
				Labels: strs(rm, "labels"), Annotations: strs(rm, "annotations"),
			})
		}
	}
	return rules
}

// parseYAMLSubset parses block-style YAML into maps, lists and strings:
// mappings with plain keys, sequences, plain and quoted scalars, and literal
// (|) and folded (>) block scalars. Flow collections, anchors, tags and
// several documents are refused.
func parseYAMLSubset(src string) (any, error) {
	p := &yamlParser{lines: strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")}
	for i, l := range p.lines {
		if strings.HasPrefix(strings.TrimLeft(l, " "), "\t") {
			return nil, fmt.Errorf("line %d: tab in indentation", i+1)
		}
	}
	p.skip()
	if p.i == len(p.lines) {
		return nil, errors.New("empty document")
	}
	v, err := p.node(p.indent())
	if err != nil {
		return nil, err
	}
	if p.skip(); p.i < len(p.lines) {
		return nil, p.errorf("unexpected indentation")
	}
	return v, nil
}

type yamlParser struct {
	lines []string
	i     int // the current line
}

func (p *yamlParser) errorf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s", p.i+1, fmt.Sprintf(format, args...))
}

// skip moves to the next line with content.
func (p *yamlParser) skip() {
	for ; p.i < len(p.lines); p.i++ {
		if s := strings.TrimSpace(p.lines[p.i]); s != "" && !strings.HasPrefix(s, "#") {
			return
		}
	}
}

func (p *yamlParser) indent() int {
	return len(p.lines[p.i]) - len(strings.TrimLeft(p.lines[p.i], " "))
}

func (p *yamlParser) text() string { return strings.TrimSpace(p.lines[p.i]) }

func (p *yamlParser) isItem() bool { t := p.text(); return t == "-" || strings.HasPrefix(t, "- ") }

// node parses the mapping or sequence that starts on the current line.
func (p *yamlParser) node(indent int) (any, error) {
	if t := p.text(); t == "---" || t == "..." {
		return nil, p.errorf("one document only")
	}
	if p.isItem() {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) sequence(indent int) ([]any, error) {
	var out []any
	for p.skip(); p.i < len(p.lines) && p.indent() == indent; p.skip() {
		if !p.isItem() {
			return nil, p.errorf("expected a list item")
		}
		var item any
		var err error
		if p.text() == "-" {
			p.i++
			if p.skip(); p.i == len(p.lines) || p.indent() <= indent {
				return nil, p.errorf("empty list item")
			}
			item, err = p.node(p.indent())
		} else {
			// "- key: value" starts a mapping at the column after the dash:
			// blank the dash and parse the line as that mapping's first.
			line := p.lines[p.i]
			p.lines[p.i] = line[:indent] + " " + line[indent+1:]
			if _, _, isKey := cutKey(p.text()); isKey {
				item, err = p.mapping(p.indent())
			} else {
				item, err = scalar(p.text())
				p.i++
			}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, item)
	}
	if p.i < len(p.lines) && p.indent() > indent {
		return nil, p.errorf("unexpected indentation")
	}
	return out, nil
}

func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	m := map[string]any{}
	for p.skip(); p.i < len(p.lines) && p.indent() == indent; p.skip() {
		key, rest, ok := cutKey(p.text())
		if !ok {
			return nil, p.errorf("expected key: value, got %q", p.text())
		}
		if _, dup := m[key]; dup {
			return nil, p.errorf("key %q twice", key)
		}
		p.i++
		var v any
		var err error
		switch {
		case rest == "":
			p.skip()
			if p.i == len(p.lines) || p.indent() < indent || p.indent() == indent && !p.isItem() {
				return nil, p.errorf("key %q has no value", key)
			}
			v, err = p.node(p.indent())
		case rest[0] == '|' || rest[0] == '>':
			v, err = p.block(indent, rest)
		default:
			v, err = scalar(rest)
		}
		if err != nil {
			return nil, err
		}
		m[key] = v
	}
	if p.i < len(p.lines) && p.indent() > indent {
		return nil, p.errorf("unexpected indentation")
	}
	return m, nil
}

// block reads a block scalar under a key at indent; header is its
// indicator: |, |-, > or >-.
func (p *yamlParser) block(indent int, header string) (string, error) {
	if !slices.Contains([]string{"|", "|-", ">", ">-"}, header) {
		return "", p.errorf("block scalar header %q not supported", header)
	}
	var lines []string
	blockIndent := -1
	for ; p.i < len(p.lines); p.i++ {
		l := p.lines[p.i]
		if strings.TrimSpace(l) == "" {
			lines = append(lines, "")
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " "))
		if n <= indent {
			break
		}
		if blockIndent < 0 {
			blockIndent = n
		}
		if n < blockIndent {
			return "", p.errorf("block scalar line less indented than its first")
		}
		lines = append(lines, l[blockIndent:])
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var s string
	if header[0] == '|' {
		s = strings.Join(lines, "\n")
	} else {
		var b strings.Builder
		for i, l := range lines {
			switch {
			case i == 0:
			case l == "" || lines[i-1] == "":
				b.WriteString("\n")
			default:
				b.WriteString(" ")
			}
			b.WriteString(l)
		}
		s = b.String()
	}
	if !strings.HasSuffix(header, "-") {
		s += "\n"
	}
	return s, nil
}

var yamlKey = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$`)

// cutKey splits "key: value".
func cutKey(s string) (key, rest string, ok bool) {
	m := yamlKey.FindStringSubmatch(s)
	if m == nil {
		return "", "", false
	}
	return m[1], strings.TrimSpace(m[2]), true
}

// scalar reads a plain, double-quoted or single-quoted scalar.
func scalar(s string) (string, error) {
	switch s[0] {
	case '"':
		v, err := strconv.Unquote(s)
		if err != nil {
			return "", fmt.Errorf("double-quoted scalar %s: %v", s, err)
		}
		return v, nil
	case '\'':
		if len(s) < 2 || s[len(s)-1] != '\'' {
			return "", fmt.Errorf("single-quoted scalar %s not closed", s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case '{', '[', '&', '*', '!', '%', '@', '`':
		return "", fmt.Errorf("%q: flow collections, anchors, aliases and tags are not supported", s)
	}
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s), nil
}

// ---- docs/runbook.md

// runbookAnchors are the anchors of the runbook's headings, as GitHub makes
// them.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(runbookPath)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	fenced := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
		}
		if h, ok := strings.CutPrefix(line, "#"); ok && !fenced {
			anchors[anchor(strings.TrimLeft(h, "#"))] = true
		}
	}
	return anchors
}

// anchor is GitHub's anchor of a heading: lower case, punctuation dropped,
// spaces as hyphens.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// heraldctlLines are the runbook's heraldctl command lines, in code blocks
// (continuation lines joined, comments cut) and in code spans.
func heraldctlLines(doc string) []string {
	var out []string
	fenced := false
	pending := ""
	for _, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
				out = append(out, m[1])
			}
			continue
		}
		if pending != "" {
			trimmed = pending + " " + trimmed
			pending = ""
		}
		if c, ok := strings.CutSuffix(trimmed, `\`); ok {
			pending = c
			continue
		}
		if i := strings.Index(trimmed, " #"); i >= 0 {
			trimmed = trimmed[:i]
		}
		if strings.HasPrefix(trimmed, "heraldctl ") {
			out = append(out, trimmed)
		}
	}
	return out
}

var flagDef = regexp.MustCompile(`fs\.(?:String|Bool|Int|Int64|Uint|Float64|Duration)(?:Var)?\((?:&[\w.]+,\s*)?"([a-z0-9-]+)"`)

// sourceFlags are the flags defined by any command under cmd/.
func sourceFlags(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("../cmd/*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../cmd/internal/*/*.go")
	flags := map[string]bool{}
	for _, f := range append(files, more...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range flagDef.FindAllStringSubmatch(string(src), -1) {
			flags[m[1]] = true
		}
	}
	if !flags["admin-addr"] || !flags["dry-run"] {
		t.Fatal("reading the flags under cmd/ found neither -admin-addr nor -dry-run")
	}
	return flags
}

// heraldctlFlags builds heraldctl and returns a function that lists the
// flags of one of its commands, from the command's -h.
func heraldctlFlags(t *testing.T) func(cmd []string) (map[string]bool, error) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "heraldctl")
	build := exec.Command("go", "build", "-o", bin, "./cmd/heraldctl")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/heraldctl: %v\n%s", err, out)
	}
	usage := regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
	cache := map[string]map[string]bool{}
	return func(cmd []string) (map[string]bool, error) {
		key := strings.Join(cmd, " ")
		if f, ok := cache[key]; ok {
			return f, nil
		}
		help := exec.Command(bin, append(slices.Clone(cmd), "-h")...)
		help.Env = []string{"PATH=" + os.Getenv("PATH")} // no HERALD_* from the caller
		out, err := help.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("heraldctl %s -h: %v\n%s", key, err, out)
		}
		flags := map[string]bool{}
		for _, m := range usage.FindAllStringSubmatch(string(out), -1) {
			flags[m[1]] = true
		}
		cache[key] = flags
		return flags, nil
	}
}

// ---- promtool

// needPromtool returns promtool's path, and fails the test without it: the
// rules are only known to load, and to fire, when promtool says so.
func needPromtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not on PATH, and it checks docs/alerts.yml: install it with " +
			"`apt-get install -y prometheus` (Debian; `make deps` does it), or put the promtool " +
			"of a Prometheus release (https://prometheus.io/download/) on PATH")
	}
	return path
}

// writeJSON writes v to a file of the test's temporary directory. promtool
// reads JSON as the YAML it is.
func writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
