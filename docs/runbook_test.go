package docs_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestRunbook checks the runbook: a section for each alert and an
// alert for each alert section, the sections every on-call engineer needs,
// its own links, the metrics it names, and the flags of the commands it
// shows.
func TestRunbook(t *testing.T) {
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

var flagDef = regexp.MustCompile(`fs\.(?:String|Bool|Int|Int64|Uint|Float64|Duration)(?:Var)?\((?:&?[\w.]+,\s*)?"([a-z0-9-]+)"`)

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
