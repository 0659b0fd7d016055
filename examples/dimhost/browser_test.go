package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dimplugd/dimplugd/internal/browsertest"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// ui is the driver of one browser test: each step fails the test on
// error, and can leave a screenshot under the test's temp dir (shot).
type ui struct {
	t *testing.T
	d *driver
	n int
}

func (u *ui) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	u.t.Helper()
	if err := u.d.do(what, actions...); err != nil {
		u.t.Fatal(err)
	}
}

func (u *ui) wait(what, expr string) {
	u.t.Helper()
	if err := u.d.wait(what, expr); err != nil {
		u.t.Fatal(err)
	}
}

func (u *ui) text(expr string) string { return u.d.eval(expr) }

func (u *ui) open(path string) {
	u.t.Helper()
	if err := u.d.open(path); err != nil {
		u.t.Fatal(err)
	}
}

func (u *ui) click(sel, path string) {
	u.t.Helper()
	if err := u.d.click(sel, path); err != nil {
		u.t.Fatal(err)
	}
}

func (u *ui) shot(name string) {
	u.t.Helper()
	if err := u.d.framesReady(); err != nil {
		u.t.Fatal(err)
	}
	u.n++
	u.t.Logf("screenshot: %s", browsertest.Screenshot(u.t, u.d.ctx, fmt.Sprintf("%02d-%s", u.n, name)))
}

// bridge returns what plugin pages said over the bridge since the last
// page load.
func (u *ui) bridge() []bridgeEntry {
	u.t.Helper()
	var log []bridgeEntry
	if err := json.Unmarshal([]byte(u.text("JSON.stringify(window.__dimBridgeLog || [])")), &log); err != nil {
		u.t.Fatalf("bridge log: %v", err)
	}
	return log
}

type bridgeEntry struct {
	Plugin, Page, Type, To, Text string
}

// TestWebUI is the web UI end to end in a real browser, against a real
// daemon with the example plugins sandboxed: contributions rendered from
// the UI document, a Preferences tab rendered from a settings schema that
// refuses an invalid value and whose saved value changes the plugin's
// behaviour on the next request, plugin pages that cannot read the host's
// cookies, DOM or storage, the bridge, and contributions gone on the next
// load after the plugin is disabled.
func TestWebUI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon and a browser")
	}
	bin, plugins := buildAll(t)
	plugins = append(plugins, testPlugin(t, "ui-probe"))
	socket := startDaemon(t, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mw, _ := installAndServe(t, ctx, bin, socket, plugins)
	srv := httptest.NewServer(newWebHandler(mw))
	defer srv.Close()
	b := &ui{t: t, d: &driver{ctx: browsertest.Start(t), base: srv.URL}}

	// The kid signs in: the UI sends a visitor without a session there.
	b.run("open", chromedp.Navigate(srv.URL+"/"))
	b.wait("the login page", `document.body.dataset.page === "/login"`)
	b.shot("login")
	if err := b.d.login("kid", "kid"); err != nil {
		t.Fatal(err)
	}
	b.wait("the stream-stats card", `document.querySelector('iframe[data-plugin="stream-stats"][data-page="summary"]') !== null`)
	if got := b.text(`[...document.querySelectorAll("#nav-plugins a")].map(a => a.textContent).join(",")`); !strings.Contains(got, "Stream statistics") || !strings.Contains(got, "Sandbox probe") {
		t.Errorf("sidebar plugin pages = %q, want Stream statistics and Sandbox probe", got)
	}
	b.shot("dashboard")

	t.Run("preferences", func(t *testing.T) {
		b.t = t
		b.click(`#nav-preferences`, "/preferences")
		tabs := b.text(`[...document.querySelectorAll(".tabs a[data-plugin]")].map(a => a.dataset.plugin).join(",")`)
		if !strings.Contains(tabs, "parental-controls") || !strings.Contains(tabs, "stream-stats") {
			t.Fatalf("preferences tabs = %q, want parental-controls and stream-stats", tabs)
		}
		// The stream-stats tab, rendered from its user settings schema.
		b.click(`.tabs a[data-plugin="stream-stats"]`, "/preferences/stream-stats")
		b.wait("the refresh field", `document.querySelector("#f-refresh_seconds") !== null`)
		if got := b.text(`document.querySelector('label[for="f-refresh_seconds"]').textContent`); got != "Refresh every (seconds)" {
			t.Errorf("refresh_seconds label = %q, want the schema's title", got)
		}
		// An invalid value: the daemon refuses it, the form says why next
		// to the field.
		b.run("enter 0", chromedp.SetValue(chromedp.CSS("#f-refresh_seconds"), "0"), chromedp.Click(chromedp.CSS(`form.settings-form button[type=submit]`)))
		b.wait("the refusal", `document.querySelector('[data-problem-for="refresh_seconds"]').textContent !== ""`)
		if got := b.text(`document.querySelector('[data-problem-for="refresh_seconds"]').textContent`); !strings.Contains(got, "1") {
			t.Errorf("refusal shown = %q, want the minimum named", got)
		}
		if got := b.text(`document.querySelector("#f-refresh_seconds").getAttribute("aria-invalid")`); got != "true" {
			t.Errorf("the refused field is not marked invalid (aria-invalid=%q)", got)
		}
		b.shot("preferences-invalid")
		b.run("enter 2", chromedp.SetValue(chromedp.CSS("#f-refresh_seconds"), "2"), chromedp.Click(chromedp.CSS(`form.settings-form button[type=submit]`)))
		b.wait("saved", `document.querySelector(".form-status").textContent === "Saved."`)
		b.shot("preferences-saved")

		// The plugin renders its page for the kid with the new interval at
		// once, without a restart.
		b.click(`#nav-plugins a[data-plugin="stream-stats"]`, "/plugins/stream-stats/stats")
		b.wait("the stats page", `document.querySelector('iframe[data-plugin="stream-stats"][data-page="stats"]') !== null`)
		code, _, body := call(t, mw, "GET", "/api/v1/plugins/stream-stats/page", "demo-token-2", "")
		if code != 200 || !strings.Contains(string(body), `<meta name="dim-refresh" content="2">`) {
			t.Errorf("stream-stats page for the kid: %d, want refresh 2 after the save:\n%.400s", code, body)
		}
		b.shot("stream-stats-page")

		// A saved parental-controls value changes what the kid may watch on
		// the very next request: Spirited Away (PG) plays under the
		// account's PG limit, not under the kid's own G.
		// (The kid's library listing teaches parental-controls the
		// ratings; media of unknown rating are denied.)
		b.open("/library/2")
		b.wait("the Animation library", `document.querySelector('a.card[data-media="1"]') !== null`)
		b.open("/media/1")
		b.wait("Spirited Away", `document.querySelector("#media-title") !== null`)
		b.open("/preferences/parental-controls")
		b.wait("the rating field", `document.querySelector("#f-max_rating") !== null`)
		b.run("choose G", chromedp.SetValue(chromedp.CSS("#f-max_rating"), `"G"`), chromedp.Click(chromedp.CSS(`form.settings-form button[type=submit]`)))
		b.wait("saved", `document.querySelector(".form-status").textContent === "Saved."`)
		b.shot("parental-controls-saved")
		b.open("/media/1")
		b.wait("the refusal", `document.querySelector("#failure") !== null`)
		if got := b.text(`document.querySelector("#failure").dataset.status`); got != "403" {
			t.Errorf("Spirited Away after choosing G: status %s, want 403", got)
		}
		b.shot("media-refused")
		b.open("/media/99") // Toy Story (G) still plays
		b.wait("Toy Story", `document.querySelector("#media-title") !== null`)

		// Back to the account's limit.
		b.open("/preferences/parental-controls")
		b.wait("the rating field", `document.querySelector("#f-max_rating") !== null`)
		b.run("choose none", chromedp.SetValue(chromedp.CSS("#f-max_rating"), `""`), chromedp.Click(chromedp.CSS(`form.settings-form button[type=submit]`)))
		b.wait("saved", `document.querySelector(".form-status").textContent === "Saved."`)
		b.open("/media/1")
		b.wait("Spirited Away again", `document.querySelector("#media-title") !== null`)
	})

	t.Run("sandbox", func(t *testing.T) {
		b.t = t
		// The host page itself can read its session cookie: the probe's
		// "blocked" below is the sandbox, not a missing cookie.
		b.open("/library/1") // parental-controls learns the ratings
		b.open("/plugins/ui-probe/probe")
		if c := b.text("document.cookie"); !strings.Contains(c, "demo-token-2") {
			t.Fatalf("the host page's cookie = %q, want the session token", c)
		}
		b.wait("the probe's report", `(window.__dimBridgeLog || []).some(e => e.type === "notify" && e.text.startsWith("probe "))`)
		var report string
		for _, e := range b.bridge() {
			if e.Type == "notify" && strings.HasPrefix(e.Text, "probe ") {
				report = e.Text
			}
		}
		t.Logf("probe: %s", report)
		server, rest, _ := strings.Cut(strings.TrimPrefix(report, "probe "), " {")
		if server != `user=2 auth="" cookie=""` {
			t.Errorf("the page's route hook got %q, want the user id and no credentials", server)
		}
		var got map[string]string
		if err := json.Unmarshal([]byte("{"+rest), &got); err != nil {
			t.Fatalf("probe report %q: %v", report, err)
		}
		for _, k := range []string{"cookie", "parentDOM", "topCookie", "storage", "opener"} {
			if !strings.HasPrefix(got[k], "blocked:") {
				t.Errorf("a plugin page read the host's %s: %q", k, got[k])
			}
		}
		if f := got["fetch"]; strings.Contains(f, "demo-token") || strings.Contains(f, "kid") || !(strings.HasPrefix(f, "blocked:") || strings.HasPrefix(f, "read:401")) {
			t.Errorf("a plugin page fetched the API as the user: %q", f)
		}
		b.wait("the probe's context", `(window.__dimBridgeLog || []).some(e => e.type === "notify" && e.text.startsWith("context probe "))`)
		for _, e := range b.bridge() {
			if strings.HasPrefix(e.Text, "context probe ") && !strings.Contains(e.Text, "theme=dark") || strings.Contains(e.Text, "data-theme=null") {
				t.Errorf("context as the probe saw it: %q, want the dark theme applied", e.Text)
			}
		}
		b.shot("probe")

		// navigate: only to the host's own pages. The probe's button asks
		// for three foreign places, then /media/42. The click lands inside
		// the iframe (by coordinates, as a user's would).
		var box struct{ X, Y float64 }
		if err := json.Unmarshal([]byte(b.text(`JSON.stringify(document.querySelector('iframe[data-page="probe"]').getBoundingClientRect())`)), &box); err != nil {
			t.Fatal(err)
		}
		b.run("click in the probe", chromedp.MouseClickXY(box.X+40, box.Y+30))
		b.wait("/media/42", `document.body.dataset.page === "/media/42"`)
		var asked []string
		for _, e := range b.bridge() {
			if e.Type == "navigate" {
				asked = append(asked, e.To)
			}
		}
		if len(asked) != 4 {
			t.Errorf("navigations asked = %q, want 4", asked)
		}
		if p := b.text("location.href"); p != srv.URL+"/media/42" {
			t.Errorf("location after the probe's navigations = %q", p)
		}

		// The player overlay gets the media id, by query and by context.
		b.wait("the overlay's context", `(window.__dimBridgeLog || []).some(e => e.text && e.text.startsWith("context overlay "))`)
		for _, e := range b.bridge() {
			if strings.HasPrefix(e.Text, "context overlay ") && (!strings.Contains(e.Text, "media=42 query=42") || !strings.Contains(e.Text, "theme=dark")) {
				t.Errorf("overlay context = %q, want media 42 and the dark theme", e.Text)
			}
		}
		// The media-action page of media-badge opens in its panel.
		b.click(`#media-actions button[data-plugin="media-badge"]`, "")
		b.wait("the views page", `document.querySelector('#action-panel iframe[data-plugin="media-badge"]') !== null`)
		b.shot("media-page")

		// A theme switch reaches the pages on the page at once.
		b.open("/preferences")
		b.run("light theme", chromedp.SetValue(chromedp.CSS("#theme"), "light"))
		b.run("dispatch change", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`document.querySelector("#theme").dispatchEvent(new Event("change"))`)(ctx, t)
			return err
		}))
		b.open("/media/42")
		b.wait("the overlay in light", `(window.__dimBridgeLog || []).some(e => e.text && e.text.startsWith("context overlay ") && e.text.includes(" theme=light ") && e.text.includes("data-theme=light"))`)
		b.shot("media-page-light")
	})

	t.Run("disable", func(t *testing.T) {
		b.t = t
		c, err := host.DialControl(ctx, controlSocket(socket))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Disable(ctx, "stream-stats"); err != nil {
			t.Fatal(err)
		}
		b.open("/dashboard")
		for what, sel := range map[string]string{
			"sidebar page":   `#nav-plugins a[data-plugin="stream-stats"]`,
			"dashboard card": `iframe[data-plugin="stream-stats"]`,
		} {
			if got := b.text(fmt.Sprintf("document.querySelector(%q) !== null", sel)); got != "false" {
				t.Errorf("after disabling stream-stats, its %s is still shown", what)
			}
		}
		b.open("/preferences")
		if got := b.text(`document.querySelector('.tabs a[data-plugin="stream-stats"]') !== null`); got != "false" {
			t.Errorf("after disabling stream-stats, its Preferences tab is still shown")
		}
		if got := b.text(`document.querySelector('.tabs a[data-plugin="parental-controls"]') !== null`); got != "true" {
			t.Errorf("parental-controls' tab went away with stream-stats")
		}
		b.shot("after-disable")
	})
}
