// Package browser drives a headless Chromium from tests through chromedp, so
// that the browser side of Herald (EventSource, its reconnects and
// Last-Event-ID) is tested in a real browser, not only against Go clients.
package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Timeouts for steps that do not take one from the caller. They are generous
// because a loaded two-core CI machine can take seconds to start Chromium.
const (
	startTimeout  = 30 * time.Second
	actionTimeout = 15 * time.Second
	closeTimeout  = 10 * time.Second
)

// pollInterval is how often WaitFor evaluates its expression.
const pollInterval = 25 * time.Millisecond

// envChromium names a browser binary to use instead of looking one up.
const envChromium = "HERALD_CHROMIUM"

// candidates are the names looked up in PATH, in order.
var candidates = []string{"chromium", "chromium-browser", "google-chrome"}

// Browser is a headless Chromium process that lives until the end of the test
// that started it.
type Browser struct {
	ctx    context.Context // the chromedp context that owns the process
	output *syncBuffer     // what Chromium printed, shown when a test fails
}

// Page is one tab of a Browser. It closes at the end of the test that opened
// it.
type Page struct {
	ctx context.Context

	mu      sync.Mutex
	console []string // console messages and uncaught exceptions
}

// Start launches a headless Chromium for tb and stops it in tb's cleanup. It
// fails the test when no browser is installed: a browser test that skips
// itself would pass in CI without testing anything.
func Start(tb testing.TB) *Browser {
	tb.Helper()
	path, err := findChromium()
	if err != nil {
		tb.Fatalf("browser: %v; install it with `apt-get install -y chromium`, or run `make test`", err)
	}

	b := &Browser{output: new(syncBuffer)}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root in CI
		// Not chromedp.DisableGPU: it also adds --enable-unsafe-swiftshader.
		chromedp.Flag("disable-gpu", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Test servers speak HTTP/1.1 and HTTP/2 only, never HTTP/3.
		chromedp.Flag("disable-quic", true),
		// A fresh profile per test, removed by the testing package.
		chromedp.UserDataDir(tb.TempDir()),
		chromedp.NoDefaultBrowserCheck,
		// /dev/shm is 64 MB in many containers; Chromium crashes when it fills.
		chromedp.Flag("disable-dev-shm-usage", true),
		// Debian's launcher passes --load-extension for packaged extensions.
		chromedp.Flag("disable-extensions", true),
		// Stable screenshots.
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1024, 768),
		chromedp.CombinedOutput(b.output),
	}

	// The first Run on a chromedp context ties the browser's life to that
	// context, so it cannot carry a deadline; a timer cancels its parent.
	root, stop := context.WithCancel(context.Background())
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(root, opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx,
		// chromedp logs to the standard logger by default, which would mix
		// its messages into every test's output.
		chromedp.WithErrorf(b.output.logf), chromedp.WithLogf(b.output.logf))
	b.ctx = ctx
	tb.Cleanup(func() {
		// Close gracefully first, so that Chromium and its helper processes
		// are gone before TempDir removes the profile.
		cctx, cancel := context.WithTimeout(ctx, closeTimeout)
		err := chromedp.Cancel(cctx)
		cancel()
		cancelBrowser()
		cancelAlloc() // waits for the process and chromedp's goroutines
		stop()
		if err != nil && !errors.Is(err, context.Canceled) {
			tb.Logf("browser: closing chromium: %v", err)
		}
		if tb.Failed() {
			tb.Logf("browser: chromium output:\n%s", b.output.tail(4000))
		}
	})

	if err := withTimer(startTimeout, stop, func() error { return chromedp.Do(ctx) }); err != nil {
		tb.Fatalf("browser: starting %s: %v", path, err) // the cleanup logs its output
	}
	return b
}

// findChromium returns the browser binary to run.
func findChromium() (string, error) {
	if name := os.Getenv(envChromium); name != "" {
		path, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s=%q: %w", envChromium, name, err)
		}
		return path, nil
	}
	for _, name := range candidates {
		if path, err := exec.LookPath(name); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("no Chromium found in PATH (looked for %s; %s may name one)",
		strings.Join(candidates, ", "), envChromium)
}

// Open opens url in a new tab and waits until the page has loaded. The tab
// closes in tb's cleanup; if the test failed, what the page wrote to its
// console is logged then.
func (b *Browser) Open(tb testing.TB, url string) *Page {
	tb.Helper()
	parent, stop := context.WithCancel(b.ctx)
	ctx, cancel := chromedp.NewContext(parent)
	p := &Page{ctx: ctx}

	collected := make(chan struct{})
	tb.Cleanup(func() {
		cancel()
		stop()
		<-collected
		if tb.Failed() {
			p.mu.Lock()
			defer p.mu.Unlock()
			tb.Logf("browser: console of %s:\n%s", url, strings.Join(p.console, "\n"))
		}
	})

	// As in Start, the first Run ties the tab to its context.
	if err := withTimer(startTimeout, stop, func() error { return chromedp.Do(ctx) }); err != nil {
		close(collected)
		tb.Fatalf("browser: opening a tab: %v", err)
	}
	// Subscribe before navigating, so that messages of the page's first
	// script are kept. The loop ends when the tab's context does.
	messages := chromedp.Console(ctx)
	go func() {
		defer close(collected)
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, m.String())
			p.mu.Unlock()
		}
	}()

	nctx, ncancel := context.WithTimeout(ctx, actionTimeout)
	defer ncancel()
	if err := chromedp.Do(nctx, chromedp.Navigate(url)); err != nil {
		tb.Fatalf("browser: navigating to %s: %v", url, err)
	}
	return p
}

// Eval evaluates the JavaScript expression js in p and decodes its value, as
// JSON, into a T. It fails the test if the expression throws or the value
// does not decode. (It is a function because methods cannot have type
// parameters.)
func Eval[T any](tb testing.TB, p *Page, js string) T {
	tb.Helper()
	v, err := eval[T](p, js, actionTimeout)
	if err != nil {
		tb.Fatalf("browser: evaluating %s: %v", js, err)
	}
	return v
}

func eval[T any](p *Page, js string, timeout time.Duration) (T, error) {
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](js))
}

// WaitFor evaluates the JavaScript boolean expression js in p until it is
// true, and fails the test if it is not within timeout. An expression that
// throws counts as false, so it may refer to state that the page has not made
// yet.
func WaitFor(tb testing.TB, p *Page, js string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		// Bound each evaluation too: a page that hangs must not hold the
		// test past its deadline.
		ok, err := eval[bool](p, js, max(time.Until(deadline), pollInterval))
		if err == nil && ok {
			return
		}
		if !time.Now().Before(deadline) {
			last := "false"
			if err != nil {
				last = err.Error()
			}
			tb.Fatalf("browser: %s still not true after %v (last: %s)", js, timeout, last)
		}
		select {
		case <-tick.C:
		case <-p.ctx.Done():
			tb.Fatalf("browser: waiting for %s: the tab closed: %v", js, p.ctx.Err())
		}
	}
}

// Screenshot writes a PNG of p's viewport to path, to see what a failing test
// saw.
func (p *Page) Screenshot(tb testing.TB, path string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, actionTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.Fatalf("browser: screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.Fatalf("browser: screenshot: %v", err)
	}
}

// withTimer runs f, and calls cancel if f has not returned within d. It is for
// a first chromedp Run, whose context must not have a deadline of its own.
func withTimer(d time.Duration, cancel context.CancelFunc, f func() error) error {
	t := time.AfterFunc(d, cancel)
	err := f()
	if !t.Stop() {
		// Even if f succeeded, the timer has canceled its context.
		if err == nil {
			err = context.Canceled
		}
		return fmt.Errorf("timed out after %v: %w", d, err)
	}
	return err
}

// syncBuffer collects Chromium's output, which chromedp writes from its own
// goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) logf(format string, args ...any) {
	fmt.Fprintf(s, "chromedp: "+format+"\n", args...)
}

// tail returns the last n bytes written, less the lines about D-Bus: there is
// no bus in a container or CI, and Chromium complains about it many times a
// second, which would hide the lines that explain a failure.
func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var kept []byte
	for line := range bytes.Lines(s.buf.Bytes()) {
		if !bytes.Contains(line, []byte(":ERROR:dbus/")) {
			kept = append(kept, line...)
		}
	}
	if len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	return string(kept)
}
