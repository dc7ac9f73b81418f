// Package docs_test holds the tests of Herald's operator documents, beside
// them: the Grafana dashboard, the Prometheus alerting rules, the runbook and
// the metrics catalogue. They hold the documents to docs/metrics.md (every
// metric and label they use is documented, and used as its type allows), to
// each other (every alert has its runbook section), and to promtool: the
// rules load, the dashboard's queries parse, and each alert fires on the
// condition it describes and stays quiet otherwise. They also hold
// docs/configuration.md to each binary's -h. The directory has no Go code of
// its own; nothing here starts any part of Herald (the binaries are built and
// only asked for their flags).
package docs_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The documents, relative to this directory.
const (
	dashboardPath = "grafana-dashboard.json"
	alertsPath    = "alerts.yml"
	runbookPath   = "runbook.md"
	metricsPath   = "metrics.md"
)

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
