package docs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestAlertRules checks each rule's fields, its metrics and labels
// against docs/metrics.md, and its runbook link.
func TestAlertRules(t *testing.T) {
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

// TestAlertsFire runs every alert through promtool's rule tests: it
// must fire on the inputs of its case, with the labels the runbook expects,
// and stay quiet on the others. Every alert needs a case.
func TestAlertsFire(t *testing.T) {
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

type alertRule struct {
	Group, Alert, Expr, For string
	Labels, Annotations     map[string]string
}

// readAlertRules reads docs/alerts.yml into its alerting rules. Scalars
// are read as the strings they are written as; promtool checks the file in
// full.
func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	src, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := parseYAML(src)
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

// parseYAML parses one YAML document into maps, lists and strings: every
// scalar is its text as written (10m, 0.5 and true stay strings), as a rule
// file's fields are. Aliases are followed; a second document is refused.
func parseYAML(src []byte) (any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty document")
		}
		return nil, err
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("line %d: one document only", more.Line)
	}
	return yamlValue(&root)
}

// yamlValue is a node as maps, lists and strings.
func yamlValue(n *yaml.Node) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return nil, errors.New("empty document")
		}
		return yamlValue(n.Content[0])
	case yaml.AliasNode:
		return yamlValue(n.Alias)
	case yaml.ScalarNode:
		return n.Value, nil
	case yaml.SequenceNode:
		out := []any{}
		for _, c := range n.Content {
			v, err := yamlValue(c)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		out := map[string]any{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a mapping key must be a scalar", k.Line)
			}
			if _, dup := out[k.Value]; dup {
				return nil, fmt.Errorf("line %d: key %q twice", k.Line, k.Value)
			}
			val, err := yamlValue(v)
			if err != nil {
				return nil, err
			}
			out[k.Value] = val
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: unexpected YAML node kind %d", n.Line, n.Kind)
}

// TestParseYAML checks the reading of rule files: scalars stay the text
// they are written as, and a duplicate key or a second document is refused.
func TestParseYAML(t *testing.T) {
	t.Parallel()
	v, err := parseYAML([]byte("groups:\n  - name: g\n    rules:\n      - for: 10m\n        expr: |\n          a > 0.5\n        labels: {partition: 3, page: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	rule := v.(map[string]any)["groups"].([]any)[0].(map[string]any)["rules"].([]any)[0].(map[string]any)
	if rule["for"] != "10m" || rule["expr"] != "a > 0.5\n" {
		t.Errorf("for %q, expr %q: want 10m and the block's text", rule["for"], rule["expr"])
	}
	if l := rule["labels"].(map[string]any); l["partition"] != "3" || l["page"] != "true" {
		t.Errorf("labels %v: want the scalars' text", l)
	}
	for _, bad := range []string{"a: 1\na: 2\n", "a: 1\n---\nb: 2\n", ""} {
		if _, err := parseYAML([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
