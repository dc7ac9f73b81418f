package docs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// configurationPath is the flags' document, relative to this directory.
const configurationPath = "configuration.md"

// flagSections says which commands each section of docs/configuration.md
// documents: the section's header (without "## "), then the commands, each a
// binary of cmd/ and its subcommand's arguments. Every flag of each command
// must be documented in the section, and every flag the section documents
// must be a flag of one of its commands. A section with no flags maps to no
// command.
var flagSections = []struct {
	header   string
	commands [][]string
}{
	{"`router`", [][]string{{"router"}}},
	{"`sseedge`", [][]string{{"sseedge"}}},
	{"`fcmworker`", [][]string{{"fcmworker"}}},
	{"`herald` (all in one)", [][]string{{"herald"}}},
	{"`heraldbench`", [][]string{{"heraldbench"}}},
	{"`heraldctl notify`", [][]string{{"heraldctl", "notify"}}},
	{"`heraldctl notify-batch`", [][]string{{"heraldctl", "notify-batch"}}},
	{"`heraldctl device`", [][]string{{"heraldctl", "device", "register"}, {"heraldctl", "device", "unregister"}}},
	{"`heraldctl hash-key`", [][]string{{"heraldctl", "hash-key"}}},
	{"`heraldctl dlq` and `heraldctl replay`", [][]string{{"heraldctl", "dlq", "ls"}, {"heraldctl", "dlq", "show"}, {"heraldctl", "replay"}}},
	{"`heraldctl presence` and `heraldctl edges`", [][]string{{"heraldctl", "presence"}, {"heraldctl", "edges"}}},
	{"`heraldctl stats`", [][]string{{"heraldctl", "stats"}}},
	{"`heraldctl trace`", [][]string{{"heraldctl", "trace"}}},
	{"`fcm-emulator`", [][]string{{"fcm-emulator"}}},
}

// cmdFlag is one flag as a command's -h prints it.
type cmdFlag struct {
	typ, def string
}

// TestConfigurationFlags holds docs/configuration.md to the binaries' -h:
// each section documents exactly its commands' flags, and a default its
// table gives is the flag's default. docs/fcm-emulator.md's table is held to
// fcm-emulator's defaults the same way.
func TestConfigurationFlags(t *testing.T) {
	bins := buildCommands(t)
	sections := readFlagSections(t, configurationPath)
	for _, fs := range flagSections {
		t.Run(strings.ReplaceAll(fs.header, "`", ""), func(t *testing.T) {
			doc, ok := sections[fs.header]
			if !ok {
				t.Fatalf("%s: no section ## %s", configurationPath, fs.header)
			}
			delete(sections, fs.header)
			have := map[string]cmdFlag{}
			for _, c := range fs.commands {
				flags := helpFlags(t, bins, c)
				for name, f := range flags {
					if !doc.documents(name) {
						t.Errorf("%s: `%s` has flag -%s, which section ## %s does not document", configurationPath, strings.Join(c, " "), name, fs.header)
					}
					have[name] = f
				}
			}
			doc.check(t, configurationPath, have)
		})
	}
	delete(sections, "") // the introduction's flags are examples
	for header, doc := range sections {
		if len(doc.flags) > 0 {
			t.Errorf("%s: section ## %s documents flags, but no command is tied to it in flagSections", configurationPath, header)
		}
	}
	// docs/fcm-emulator.md's prose names other binaries' flags too: hold
	// only its table to the emulator.
	emulator := &docSection{}
	for _, d := range readFlagSections(t, "fcm-emulator.md") {
		for _, r := range d.rows {
			emulator.flags = append(emulator.flags, r.names...)
			emulator.rows = append(emulator.rows, r)
		}
	}
	if len(emulator.rows) == 0 {
		t.Error("fcm-emulator.md: no flag table found")
	}
	emulator.check(t, "fcm-emulator.md", helpFlags(t, bins, []string{"fcm-emulator"}))
}

// buildCommands builds every binary of flagSections once, into a temporary
// directory, and returns the directory.
func buildCommands(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	seen := map[string]bool{}
	for _, fs := range flagSections {
		for _, c := range fs.commands {
			if !seen[c[0]] {
				seen[c[0]] = true
				args = append(args, "../cmd/"+c[0])
			}
		}
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dir
}

var (
	helpLine    = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9_-]*)(?: ([a-z0-9]+))?(?:\t.*)?$`)
	helpDefault = regexp.MustCompile(`\(default (.*)\)$`)
)

// helpFlags runs command with -h, in an empty environment so that no
// HERALD_ variable shows, and returns the flags the flag package prints.
func helpFlags(t *testing.T, bins string, command []string) map[string]cmdFlag {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins, command[0]), append(slices.Clone(command[1:]), "-h")...)
	cmd.Env = []string{}
	out, _ := cmd.CombinedOutput() // -h exits 0 or 2, as the command chooses
	flags := map[string]cmdFlag{}
	var name string
	var usage strings.Builder
	flush := func() {
		if name == "" {
			return
		}
		f := flags[name]
		if m := helpDefault.FindStringSubmatch(usage.String()); m != nil {
			f.def = m[1]
			if s, err := strconv.Unquote(f.def); err == nil && f.typ == "string" {
				f.def = s
			}
		} else {
			f.def = zeroDefault(f.typ)
		}
		flags[name] = f
		name = ""
		usage.Reset()
	}
	for _, line := range strings.Split(string(out), "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			flush()
			name = m[1]
			flags[name] = cmdFlag{typ: m[2]}
			if _, rest, ok := strings.Cut(line, "\t"); ok {
				usage.WriteString(rest)
			}
		} else if name != "" && strings.HasPrefix(line, "    \t") {
			usage.WriteString(strings.TrimPrefix(line, "    \t"))
		} else {
			flush()
		}
	}
	flush()
	if len(flags) == 0 && !strings.Contains(string(out), "usage") {
		t.Fatalf("%s -h printed no flags and no usage:\n%s", strings.Join(command, " "), out)
	}
	return flags
}

// zeroDefault is the default the flag package leaves unprinted for a flag
// of type typ (empty: a bool flag).
func zeroDefault(typ string) string {
	switch typ {
	case "":
		return "false"
	case "int", "int64", "uint", "uint64", "float":
		return "0"
	case "duration":
		return "0s"
	}
	return ""
}

// docRow is one table row of flags: their names and their defaults as the
// table gives them (none when the cell is prose or empty).
type docRow struct {
	names, defaults []string
}

// docSection is what one section documents.
type docSection struct {
	// flags are the names documented: a table row's first cell, or a code
	// span `-name` of the prose outside links (a linked one, such as
	// [`-trace-ttl`](#router), refers to another section). A name ending in
	// * documents every flag it prefixes.
	flags []string
	rows  []docRow
}

var (
	flagCodeSpan = regexp.MustCompile("`([^`]*)`")
	linkedCode   = regexp.MustCompile("\\[`[^`]*`\\]\\([^)]*\\)")
	flagName     = regexp.MustCompile(`^-([a-z][a-z0-9-]*\*?)$`)
)

// readFlagSections reads a document's flags by section header; the flags
// before the first "## " header are under "".
func readFlagSections(t *testing.T, path string) map[string]*docSection {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]*docSection{}
	cur := &docSection{}
	sections[""] = cur
	inCode := false
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inCode = !inCode
		case inCode:
		case strings.HasPrefix(line, "## "):
			cur = &docSection{}
			sections[strings.TrimPrefix(line, "## ")] = cur
		case strings.HasPrefix(line, "| `-"):
			cells := strings.Split(strings.Trim(line, "|"), "|")
			if len(cells) != 3 {
				t.Fatalf("%s: a flag row this test cannot read (| `-flag` | default | meaning |): %s", path, line)
			}
			row := docRow{names: flagSpans(cells[0])}
			if len(row.names) == 0 {
				t.Fatalf("%s: a flag row whose first cell names no flag: %s", path, line)
			}
			def := cells[1]
			if strings.Trim(flagCodeSpan.ReplaceAllString(def, ""), " ,()") == "" {
				for _, m := range flagCodeSpan.FindAllStringSubmatch(def, -1) {
					row.defaults = append(row.defaults, m[1])
				}
			}
			cur.flags = append(cur.flags, row.names...)
			cur.rows = append(cur.rows, row)
		case strings.HasPrefix(line, "|"):
		default:
			cur.flags = append(cur.flags, flagSpans(linkedCode.ReplaceAllString(line, ""))...)
		}
	}
	return sections
}

// flagSpans returns the flag names of the code spans of s.
func flagSpans(s string) []string {
	var names []string
	for _, m := range flagCodeSpan.FindAllStringSubmatch(s, -1) {
		if f := flagName.FindStringSubmatch(m[1]); f != nil {
			names = append(names, f[1])
		}
	}
	return names
}

// documents reports whether the section documents flag name.
func (d *docSection) documents(name string) bool {
	for _, f := range d.flags {
		if f == name || (strings.HasSuffix(f, "*") && strings.HasPrefix(name, strings.TrimSuffix(f, "*"))) {
			return true
		}
	}
	return false
}

// check fails t for each flag the section documents that have lacks, and
// each default of its tables that is not the flag's.
func (d *docSection) check(t *testing.T, path string, have map[string]cmdFlag) {
	t.Helper()
	for _, f := range d.flags {
		found := false
		for name := range have {
			if (&docSection{flags: []string{f}}).documents(name) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: documents -%s, which the command does not have", path, f)
		}
	}
	for _, r := range d.rows {
		if len(r.defaults) == 0 {
			continue
		}
		for i, name := range r.names {
			f, ok := have[name]
			if !ok {
				continue
			}
			var want []string // what the cell may say for this flag
			switch {
			case len(r.defaults) == len(r.names):
				want = r.defaults[i : i+1]
			case len(r.names) == 1:
				want = r.defaults // a value and its spelling out, such as `256MiB` (`268435456`)
			default:
				t.Errorf("%s: row of %v gives %d defaults for %d flags", path, r.names, len(r.defaults), len(r.names))
				continue
			}
			if !slices.ContainsFunc(want, func(w string) bool { return sameDefault(w, f.def) }) {
				t.Errorf("%s: -%s: documented default %q, but the flag's is %q", path, name, strings.Join(want, " or "), f.def)
			}
		}
	}
}

// sameDefault reports whether a documented default is the flag's: equal, or
// the same duration spelt differently (`1h` for 1h0m0s).
func sameDefault(doc, flag string) bool {
	if doc == flag {
		return true
	}
	a, errA := time.ParseDuration(doc)
	b, errB := time.ParseDuration(flag)
	return errA == nil && errB == nil && a == b
}
