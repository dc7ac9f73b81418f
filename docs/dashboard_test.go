package docs_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestGrafanaDashboard checks the dashboard's structure, and every query
// against docs/metrics.md.
func TestGrafanaDashboard(t *testing.T) {
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

// TestPromtoolCheck loads the rules with promtool, and the
// dashboard's queries too, as recording rules, so that a query Prometheus
// would not parse fails here.
func TestPromtoolCheck(t *testing.T) {
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
