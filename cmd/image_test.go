// Package cmd_test checks what the container images (the Dockerfile at the
// repository's root) rely on, without a container runtime: each binary
// under cmd/, built as the Dockerfile builds it, is static, with no loader
// and no libc, and starts with an empty environment, as it does in an
// image FROM scratch; and the Dockerfile and docs/deploy/ agree with cmd/.
package cmd_test

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mains are the binaries under cmd/: the directories with a main.go.
func mains(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(e.Name(), "main.go")); e.IsDir() && err == nil {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		t.Fatal("no main package under cmd/")
	}
	return names
}

// buildStatic builds every binary under cmd/ into a temporary directory as
// the Dockerfile does: one `go build`, which compiles the packages in
// parallel and keeps them in the build cache for the next run.
func buildStatic(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("the go command is not on PATH: install Go (https://go.dev/dl/) and put its bin directory on PATH")
	}
	buildFlags := []string{"-trimpath", "-ldflags=-s -w"} // the Dockerfile's
	dir := t.TempDir()
	// A cold build cache on a loaded machine can take minutes: the build
	// may use the test's whole time, less a tenth of what is left (at most
	// a minute) to report.
	deadline := time.Now().Add(8 * time.Minute)
	if d, ok := t.Deadline(); ok {
		deadline = d.Add(-min(time.Minute, time.Until(d)/10))
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, append(append([]string{"build"}, buildFlags...), "-o", dir+"/", "./...")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build %s ./cmd/...: %v\n%s", strings.Join(buildFlags, " "), err, out)
	}
	return dir
}

// checkStatic fails unless the ELF file at path is a static executable: no
// PT_INTERP (it needs no dynamic loader), no PT_DYNAMIC or .dynamic
// section, no shared library, and stripped, as -s -w asks.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: it is dynamically linked", path, p.Type)
		}
	}
	if f.Section(".dynamic") != nil || f.Section(".interp") != nil {
		t.Errorf("%s has a .dynamic or .interp section", path)
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s imports shared libraries %v (%v)", path, libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: it was not built with -ldflags='-s -w'", path)
	}
}

// Each binary is static and prints its usage with an empty environment;
// the FCM emulator, a server, also serves and stops cleanly on SIGTERM.
func TestStaticBinaries(t *testing.T) {
	dir := buildStatic(t)
	for _, name := range mains(t) {
		bin := filepath.Join(dir, name)
		checkStatic(t, bin)

		cmd := exec.Command(bin, "-h")
		cmd.Env = []string{} // empty, not inherited
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && (!errors.As(err, &exit) || exit.ExitCode() < 0) {
			t.Errorf("%s -h with an empty environment: %v\n%s", name, err, out)
			continue
		}
		if !strings.Contains(strings.ToLower(string(out)), "usage") {
			t.Errorf("%s -h with an empty environment printed no usage:\n%s", name, out)
		}
	}

	// A short run: the emulator listens, answers HTTP and stops on SIGTERM.
	cmd := exec.Command(filepath.Join(dir, "fcm-emulator"), "-addr", "127.0.0.1:0")
	cmd.Env = []string{}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatalf("fcm-emulator printed nothing: %v", sc.Err())
	}
	base := regexp.MustCompile(`http://127\.0\.0\.1:\d+`).FindString(sc.Text())
	if base == "" {
		t.Fatalf("fcm-emulator's first line names no address: %q", sc.Text())
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, stdout) // the rest of the banner
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/emulator/messages")
	if err != nil {
		t.Fatalf("fcm-emulator started with an empty environment does not answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /emulator/messages: %s", resp.Status)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-drained
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fcm-emulator after SIGTERM: %v, want a clean exit", err)
	}
}

// The Dockerfile builds as this test does, has a target with the binary
// as its entry point for each binary under cmd/, runs them as the user
// docs/deploy/ runs them as, on a base with nothing else; and each image
// the manifests name is set in the kustomization.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "go build -trimpath -ldflags='-s -w'", "FROM scratch AS base",
		"COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt", "USER 65532:65532"} {
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
	for _, name := range mains(t) {
		stage := "FROM base AS " + name + "\nCOPY --from=build /out/bin/" + name + " /usr/local/bin/" + name + "\n"
		if !strings.Contains(df, stage) {
			t.Errorf("the Dockerfile has no target %q that copies the binary: want\n%s", name, stage)
		}
		if entry := `ENTRYPOINT ["/usr/local/bin/` + name + `"]`; !strings.Contains(df, entry) {
			t.Errorf("the Dockerfile has no %s", entry)
		}
	}

	kust, err := os.ReadFile("../docs/deploy/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set := regexp.MustCompile(`(?m)^  - name: (\S+)$`).FindAllStringSubmatch(string(kust), -1)
	var images []string
	for _, m := range set {
		images = append(images, m[1])
	}
	for _, name := range []string{"router", "sseedge", "fcmworker"} {
		manifest, err := os.ReadFile("../docs/deploy/" + name + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		m := string(manifest)
		if want := "image: herald-" + name + " "; !strings.Contains(m, want) {
			t.Errorf("docs/deploy/%s.yaml does not name the image herald-%s", name, name)
		}
		if !slices.Contains(images, "herald-"+name) {
			t.Errorf("docs/deploy/kustomization.yaml does not set the image herald-%s", name)
		}
		if !strings.Contains(m, "runAsUser: 65532") || !strings.Contains(m, "runAsGroup: 65532") {
			t.Errorf("docs/deploy/%s.yaml does not run as 65532:65532, the images' user", name)
		}
	}
}
