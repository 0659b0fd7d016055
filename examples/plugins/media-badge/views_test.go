package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

func getViews(t *testing.T, h *plugintest.Harness, rawQuery string) (int, http.Header, string) {
	t.Helper()
	resp, err := h.Route("views", &plugin.Request{Method: "GET", Path: "/api/v1/plugins/media-badge/views", RawQuery: rawQuery, UserID: 2, Authenticated: true})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status, resp.Header, string(resp.Body)
}

func TestViewsPage(t *testing.T) {
	h := plugintest.Start(t, &badge{}, plugintest.WithKV(map[string][]byte{"views/42": []byte("9"), "views/7": []byte("1")}))
	for _, tc := range []struct {
		query   string
		views   string // the count shown
		message string // what the button notifies
	}{
		{"media_id=42", `<span class="count">9</span> views`, `dim.notify("Media 42 was viewed 9 times.")`},
		{"media_id=7", `<span class="count">1</span> view of`, `dim.notify("Media 7 was viewed 1 time.")`},
		{"media_id=13", `<span class="count">0</span> views`, `dim.notify("Media 13 was viewed 0 times.")`},
		{"media_id=9223372036854775807&x=1", `<span class="count">0</span>`, `Media 9223372036854775807 was viewed`},
	} {
		status, hdr, body := getViews(t, h, tc.query)
		if status != 200 || hdr.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("?%s: %d %v", tc.query, status, hdr)
		}
		for _, want := range []string{tc.views, tc.message, "<script>" + plugin.BridgeScript + "</script>", `var(--dim-accent, #c46a00)`, `<button type="button" id="tell">`} {
			if !strings.Contains(body, want) {
				t.Errorf("?%s: the page lacks %s", tc.query, want)
			}
		}
	}
	// Opening the page counts no view.
	if got := string(h.KV()["views/42"]); got != "9" {
		t.Errorf("views/42 = %q after showing the page", got)
	}
}

func TestViewsPageValidatesMediaID(t *testing.T) {
	h := plugintest.Start(t, &badge{}, plugintest.WithKV(map[string][]byte{"views/42": []byte("9")}))
	for _, q := range []string{
		"",
		"media_id=",
		"media_id=0",
		"media_id=-42",
		"media_id=+42",
		"media_id=042",
		"media_id=4.2",
		"media_id=42abc",
		"media_id=0x2a",
		"media_id=%2042",
		"media_id=9223372036854775808", // over int64
		"media_id=" + url.QueryEscape(`42"><script>alert(1)</script>`),
		"media_id=" + url.QueryEscape("../42"),
		"id=42",
	} {
		status, hdr, body := getViews(t, h, q)
		if status != http.StatusBadRequest || hdr.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(body, "media_id must be a positive integer") {
			t.Errorf("?%s: %d %s, want 400", q, status, body)
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "dim.notify") || strings.Contains(body, `class="count"`) {
			t.Errorf("?%s: the refusal shows more than the error:\n%s", q, body)
		}
	}
}

// TestManifestPage: plugin.toml declares the page, served by the views
// hook (manifest.Load checks that a GET route hook answers it).
func TestManifestPage(t *testing.T) {
	m, err := manifest.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	want := manifest.Page{ID: "views", Title: "Views", Slot: manifest.SlotMediaAction, Route: "/api/v1/plugins/media-badge/views"}
	if len(m.UI.Pages) != 1 || m.UI.Pages[0] != want {
		t.Errorf("pages %+v, want %+v", m.UI.Pages, want)
	}
}
