// Package browsertest starts a headless Chromium for tests that drive a web
// page with chromedp.
//
// A test calls Start to get a chromedp context whose browser lives until the
// test ends, then runs actions on it with chromedp.Run or chromedp.Do:
//
//	ctx := browsertest.Start(t)
//	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
//		t.Fatal(err)
//	}
//	t.Logf("screenshot: %s", browsertest.Screenshot(t, ctx, "after-load"))
//
// The browser and its flags are package browser's: /usr/bin/chromium, or
// the path in $DIMPLUGD_CHROMIUM, headless, with a fresh profile and
// nothing that reaches the network on its own. When it is missing, Start skips the test, except when $CI is "true": then the test
// fails, so that a CI machine without a browser does not pass silently.
package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dimplugd/dimplugd/internal/browser"
)

// startTimeout bounds how long Start waits for the browser to come up.
const startTimeout = 60 * time.Second

// Start launches a fresh headless Chromium with its own user data directory
// and returns a chromedp context for one tab of it. The browser stops, and
// the directory is removed, when the test ends. Start skips the test when the
// browser is missing (fails it when $CI is "true").
func Start(t testing.TB) context.Context {
	t.Helper()
	path := browser.ExecPath()
	if err := browser.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("browsertest: CI=true and the browser is missing: %v", err)
		}
		t.Skipf("browsertest: %v", err)
	}

	// The profile directory is ours, not t.TempDir(): Chromium's helper
	// processes can write into it for a moment after the browser exits, and
	// t.TempDir's cleanup fails the test on "directory not empty". Removal
	// is retried below instead.
	profile, err := os.MkdirTemp("", "browsertest-profile-")
	if err != nil {
		t.Fatalf("browsertest: profile dir: %v", err)
	}
	t.Cleanup(func() { removeAllRetry(t, profile) })

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), browser.Options(profile)...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx,
		chromedp.WithLogf(t.Logf),
		chromedp.WithErrorf(func(format string, args ...any) { t.Logf("chromedp error: "+format, args...) }),
	)
	// Cleanups run last-in first-out: the tab and the browser stop (the
	// allocator's cancel waits for the process) before the profile goes.
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})

	// The first Run starts the browser. It must run on ctx itself, without a
	// timeout, because its context owns the browser; a watchdog bounds it.
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("browsertest: start %s: %v", path, err)
		}
	case <-time.After(startTimeout):
		cancelCtx()
		<-done
		t.Fatalf("browsertest: %s did not start within %v", path, startTimeout)
	}
	return ctx
}

// Screenshot saves a full-page PNG of the tab of ctx as NAME.png in a
// per-test directory and returns its path. It fails the test on error.
// The directory is a t.TempDir, removed after the test, unless
// $BROWSERTEST_SCREENSHOTS names a directory to keep them in (CI
// artifacts): then it is a subdirectory of it named after the test.
func Screenshot(t testing.TB, ctx context.Context, name string) string {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browsertest: screenshot %q: %v", name, err)
	}
	path := filepath.Join(screenshotDir(t), sanitize(name)+".png")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatalf("browsertest: screenshot %q: %v", name, err)
	}
	return path
}

var (
	dirsMu sync.Mutex
	dirs   = map[testing.TB]string{}
)

// screenshotDir returns the test's screenshot directory, one t.TempDir per
// test, made on first use.
func screenshotDir(t testing.TB) string {
	dirsMu.Lock()
	defer dirsMu.Unlock()
	if d, ok := dirs[t]; ok {
		return d
	}
	var d string
	if root := os.Getenv("BROWSERTEST_SCREENSHOTS"); root != "" {
		d = filepath.Join(root, sanitize(t.Name()))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("browsertest: %v", err)
		}
	} else {
		d = t.TempDir()
	}
	dirs[t] = d
	t.Cleanup(func() {
		dirsMu.Lock()
		delete(dirs, t)
		dirsMu.Unlock()
	})
	return d
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func sanitize(name string) string {
	s := strings.Trim(unsafeName.ReplaceAllString(name, "_"), "._")
	if s == "" {
		s = "screenshot"
	}
	return s
}

// removeAllRetry removes dir, retrying for a few seconds while the browser's
// helper processes finish writing into it.
func removeAllRetry(t testing.TB, dir string) {
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err = os.RemoveAll(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("browsertest: remove profile %s: %v", dir, err)
}

// textResult is what Text's page expression returns.
type textResult struct {
	Found bool   `json:"found"`
	Text  string `json:"text"`
}

// Text returns the text content of the first element matching the CSS
// selector, read in one step inside the page, and whether one matched. Unlike
// chromedp.Text, which finds a node and then reads it in a second round trip,
// it cannot fail with "No node with given id" when the page re-renders the
// element in between: tests that poll a live table use it.
func Text(ctx context.Context, selector string) (string, bool, error) {
	sel, err := json.Marshal(selector)
	if err != nil {
		return "", false, err
	}
	expr := `(() => { const e = document.querySelector(` + string(sel) + `); return e ? {found: true, text: e.textContent.trim()} : {found: false, text: ""}; })()`
	out, err := chromedp.Run(ctx, chromedp.Evaluate[textResult](expr))
	if err != nil {
		return "", false, err
	}
	return out.Text, out.Found, nil
}
