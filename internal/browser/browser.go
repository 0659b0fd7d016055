// Package browser starts the headless Chromium that dimplugd's browser
// tests (internal/browsertest) and the demo's screenshots (dimhost shots)
// drive with chromedp: Debian's chromium, with nothing that reaches the
// network on its own (no sync, component updates or background requests)
// and a fresh profile.
package browser

import (
	"context"
	"fmt"
	"os"

	"github.com/chromedp/chromedp"
)

// DefaultExecPath is the browser Start runs when $DIMPLUGD_CHROMIUM is unset.
const DefaultExecPath = "/usr/bin/chromium"

// ExecPath returns the browser binary to run.
func ExecPath() string {
	if p := os.Getenv("DIMPLUGD_CHROMIUM"); p != "" {
		return p
	}
	return DefaultExecPath
}

// Available reports whether the browser binary is there, and if not, why.
func Available() error {
	if _, err := os.Stat(ExecPath()); err != nil {
		return fmt.Errorf("no browser at %s (install Debian's chromium, or set DIMPLUGD_CHROMIUM): %w", ExecPath(), err)
	}
	return nil
}

// Options are the allocator options of a headless browser with the
// profile directory profile (which must be fresh and the caller's to
// remove).
func Options(profile string) []chromedp.ExecAllocatorOption {
	return []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ExecPath()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(profile),
	}
}

// Start starts a browser with the profile directory profile and returns a
// chromedp context for one tab of it; cancel stops the browser and waits
// for it to exit. The browser is started before Start returns.
func Start(profile string, logf func(string, ...any)) (ctx context.Context, cancel func(), err error) {
	if err := Available(); err != nil {
		return nil, nil, err
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), Options(profile)...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithLogf(logf), chromedp.WithErrorf(logf))
	cancel = func() { cancelCtx(); cancelAlloc() }
	// The first action starts the browser; it runs on ctx itself (no
	// timeout: that context owns the browser).
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("start %s: %w", ExecPath(), err)
	}
	return ctx, cancel, nil
}
