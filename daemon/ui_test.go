package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// TestUIDocument: the UI document a host serves lists what enabled,
// running plugins contribute — a Preferences tab from user settings and
// pages in their slots, each with a sandbox that never allows the host's
// origin — and follows plugins as they are disabled and enabled; a
// plugin's page is answered with the sandbox CSP even when opened
// directly.
func TestUIDocument(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	m := testplugManifest("paged", nil, hooks("route", "GET", "/api/v1/plugins/paged/ui/*page", "2s", "fail-closed", 0)) + `
[settings.user]
schema = "user.json"

[[ui.pages]]
id = "stats"
title = "Paged stats"
slot = "nav"
route = "/api/v1/plugins/paged/ui/index.html"

[[ui.pages]]
id = "overlay"
title = "Paged overlay"
slot = "player-overlay"
route = "/api/v1/plugins/paged/ui/overlay"
`
	dir := pluginDir(t, m)
	if err := os.WriteFile(filepath.Join(dir, "user.json"), []byte(settingsUserV1), 0o644); err != nil {
		t.Fatal(err)
	}
	td.install(t, dir)
	td.install(t, pluginDir(t, testplugManifest("plain", nil, hooks("request", "GET", "/plain/:id", "1s", "fail-open", 0))))
	waitState(t, td.ctl, "paged", 30*time.Second, "running", running)
	waitState(t, td.ctl, "plain", 30*time.Second, "running", running)

	s := dial(t, td.socket)
	mw, err := host.NewMiddleware(context.Background(), s, http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		mw.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}
	doc := func() wire.UIDocument {
		t.Helper()
		rec := get(host.UIPath)
		var d wire.UIDocument
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &d) != nil {
			t.Fatalf("GET %s: %d %s", host.UIPath, rec.Code, rec.Body)
		}
		return d
	}

	d1 := doc()
	if d1.Format != wire.UIFormat || d1.Version == "" || len(d1.Slots) != 4 || len(d1.Plugins) != 1 {
		t.Fatalf("UI document: %+v", d1)
	}
	p := d1.Plugins[0]
	if p.Name != "paged" || p.Preferences == nil || p.Preferences.URL != "/api/v1/plugins/paged/settings" || len(p.Pages) != 2 {
		t.Fatalf("paged's contributions: %+v", p)
	}
	for _, pg := range p.Pages {
		if pg.Sandbox != wire.PageSandbox || pg.URL == "" || pg.Slot == "" {
			t.Errorf("page %+v", pg)
		}
	}
	if p.Pages[0].ID != "stats" || p.Pages[0].Slot != "nav" || p.Pages[0].URL != "/api/v1/plugins/paged/ui/index.html" {
		t.Errorf("first page: %+v", p.Pages[0])
	}

	// The page itself comes from the plugin (once the host's route table
	// has its route), with the sandbox CSP.
	var rec *httptest.ResponseRecorder
	waitFor(t, 10*time.Second, "the page to be served", func() bool {
		rec = get("/api/v1/plugins/paged/ui/index.html")
		return rec.Code == 200
	})
	if csp := rec.Header().Get("Content-Security-Policy"); csp != wire.PageCSP || !strings.Contains(rec.Body.String(), "owned by paged") {
		t.Errorf("the page: %q, CSP %q, want %q", rec.Body, csp, wire.PageCSP)
	}

	// Disabled, it contributes nothing; enabled again, it is back.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := td.ctl.Disable(ctx, "paged"); err != nil {
		t.Fatal(err)
	}
	var last wire.UIDocument
	if !poll(10*time.Second, func() bool { last = doc(); return len(last.Plugins) == 0 }) || last.Version == d1.Version {
		t.Errorf("after disable: %+v (version before %s)", last, d1.Version)
	}
	if _, err := td.ctl.Enable(ctx, "paged"); err != nil {
		t.Fatal(err)
	}
	if !poll(30*time.Second, func() bool { last = doc(); return len(last.Plugins) == 1 }) || last.Version != d1.Version {
		t.Errorf("after enable: %+v, want the first document (version %s)", last, d1.Version)
	}
}
