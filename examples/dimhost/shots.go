package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dimplugd/dimplugd/internal/browser"
)

// driver drives the web UI in one browser tab: the browser test and
// `dimhost shots` share it. Every wait is a condition polled in the page.
type driver struct {
	ctx  context.Context
	base string // the host's URL, without a trailing slash
}

// step bounds one browser action.
const step = 30 * time.Second

// do runs actions in the tab.
func (d *driver) do(what string, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(d.ctx, step)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		return fmt.Errorf("%s: %w (on %s)", what, err, d.eval("location.pathname"))
	}
	return nil
}

// wait polls the JavaScript condition expr until it is truthy.
func (d *driver) wait(what, expr string) error {
	ctx, cancel := context.WithTimeout(d.ctx, step)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(step))); err != nil {
		return fmt.Errorf("waiting for %s (%s): %w; %s shows: %.600s", what, expr, err,
			d.eval("location.pathname"), d.eval("document.getElementById('main').innerText"))
	}
	return nil
}

// eval evaluates expr as a string ("(error)" when it fails).
func (d *driver) eval(expr string) string {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string]("String("+expr+")"))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return s
}

// shown waits until the UI has rendered path.
func (d *driver) shown(path string) error {
	return d.wait("page "+path, fmt.Sprintf("document.body.dataset.page === %q", path))
}

// open loads path afresh (a full page load) and waits until it is shown.
func (d *driver) open(path string) error {
	if err := d.do("open "+path, chromedp.Navigate(d.base+path)); err != nil {
		return err
	}
	return d.shown(path)
}

// click clicks the element sel, then waits until path is shown ("" for a
// click that does not navigate).
func (d *driver) click(sel, path string) error {
	if err := d.do("click "+sel, chromedp.Click(chromedp.CSS(sel))); err != nil || path == "" {
		return err
	}
	return d.shown(path)
}

// login signs in on the login page and waits for the dashboard.
func (d *driver) login(user, password string) error {
	if err := d.open("/login"); err != nil {
		return err
	}
	if err := d.do("sign in", chromedp.SendKeys(chromedp.CSS("#username"), user), chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS(`form.login button[type=submit]`))); err != nil {
		return err
	}
	return d.shown("/dashboard")
}

// framesReady waits until every plugin page on the page has said ready.
func (d *driver) framesReady() error {
	return d.wait("plugin pages", `[...document.querySelectorAll("iframe.plugin-page")].every(f =>
		(window.__dimBridgeLog || []).some(e => e.type === "ready" && e.plugin === f.dataset.plugin && e.page === f.dataset.page))`)
}

// screenshot writes a full-page PNG to path.
func (d *driver) screenshot(path string) error {
	ctx, cancel := context.WithTimeout(d.ctx, step)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return fmt.Errorf("screenshot: %w", err)
	}
	return os.WriteFile(path, png, 0o644)
}

// shots is `dimhost shots`: it signs in to a running dimhost's web UI in
// headless Chromium and saves screenshots of what plugins add to it, for
// the demo.
func shots(args []string) error {
	fs := flag.NewFlagSet("shots", flag.ExitOnError)
	base := fs.String("url", "http://127.0.0.1:8000", "the dimhost web UI")
	out := fs.String("out", ".", "directory to write the PNGs to")
	user := fs.String("user", "kid", "account to sign in with")
	password := fs.String("password", "kid", "its password")
	fs.Parse(args)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	profile, err := os.MkdirTemp("", "dimhost-shots-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(profile)
	ctx, cancel, err := browser.Start(profile, func(string, ...any) {})
	if err != nil {
		return err
	}
	defer cancel()
	d := &driver{ctx: ctx, base: *base}
	if err := d.login(*user, *password); err != nil {
		return err
	}
	tour := []struct {
		name, path string
		then       func() error
	}{
		{"dashboard", "/dashboard", nil},
		{"preferences-parental-controls", "/preferences/parental-controls", func() error { return d.wait("the form", `document.querySelector("form.settings-form") !== null`) }},
		{"preferences-stream-stats", "/preferences/stream-stats", func() error { return d.wait("the form", `document.querySelector("form.settings-form") !== null`) }},
		{"stream-stats-page", "/plugins/stream-stats/stats", nil},
		{"media-page", "/media/42", func() error {
			if err := d.click(`#media-actions button[data-plugin="media-badge"]`, ""); err != nil {
				return err
			}
			return d.wait("the views page", `document.querySelector('#action-panel iframe') !== null`)
		}},
	}
	for _, s := range tour {
		if err := d.open(s.path); err != nil {
			return err
		}
		if s.then != nil {
			if err := s.then(); err != nil {
				return err
			}
		}
		if err := d.framesReady(); err != nil {
			return err
		}
		path := filepath.Join(*out, s.name+".png")
		if err := d.screenshot(path); err != nil {
			return err
		}
		fmt.Println(path)
	}
	return nil
}
