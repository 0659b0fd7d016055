package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// userSchema compiles the plugin's user settings schema as the daemon
// does at install.
func userSchema(t *testing.T) *settings.Schema {
	t.Helper()
	m, err := manifest.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	set, err := settings.LoadDir(".", m.Settings)
	if err != nil {
		t.Fatal(err)
	}
	if set.User == nil || set.Global != nil {
		t.Fatal("want user settings only")
	}
	return set.User.Schema
}

// userValues validates a user's stored settings and returns what the
// daemon hands the plugin: the defaults overlaid with them.
func userValues(t *testing.T, stored map[string]any) map[string]any {
	t.Helper()
	s := userSchema(t)
	if err := s.Validate(stored); err != nil {
		t.Fatalf("%v refused: %v", stored, err)
	}
	return s.Effective(stored)
}

func TestUserSettingsSchema(t *testing.T) {
	s := userSchema(t)
	if got := fmt.Sprint(s.Defaults()); got != "map[refresh_seconds:5]" {
		t.Errorf("defaults %s", got)
	}
	for _, tc := range []struct {
		values string
		want   string // in the refusal; "" if accepted
	}{
		{`{"refresh_seconds": 1}`, ""},
		{`{"refresh_seconds": 60}`, ""},
		{`{"refresh_seconds": 0}`, "refresh_seconds: must be >= 1"},
		{`{"refresh_seconds": 61}`, "refresh_seconds: must be <= 60"},
		{`{"refresh_seconds": 2.5}`, "refresh_seconds: must be an integer"},
		{`{"refresh_seconds": "5"}`, "refresh_seconds: must be an integer"},
		{`{"refresh": 5}`, "refresh: is not a known setting"},
	} {
		var v map[string]any
		if err := json.Unmarshal([]byte(tc.values), &v); err != nil {
			t.Fatal(err)
		}
		err := s.Validate(v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s refused: %v", tc.values, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want a refusal with %q", tc.values, err, tc.want)
		}
	}
}

// storedStream is a stream's statistics as the store keeps them.
func storedStream(t *testing.T, st Stats) []byte {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostile is what a host's stream metadata could hold.
const hostile = `"><script>alert(1)</script><img src=x onerror=alert(2)>`

func uiStore(t *testing.T) map[string][]byte {
	return map[string][]byte{
		"next-id": []byte("4"),
		"streams/00000001": storedStream(t, Stats{ID: 1, Kind: "video/segment", MediaID: 42, Track: "42-video", Codec: "avc1.64001f",
			Frames: 7, Segments: 6, Bytes: 3_600_000, Bitrate: 4_800_000, KeyFrames: 6, LastSeen: t0, EndedHow: "completed"}),
		"streams/00000002": storedStream(t, Stats{ID: 2, Kind: "audio/segment", Track: hostile, Codec: "</style><style>*{display:none}",
			Frames: 3, Bytes: 400_000, LastSeen: t0, EndedHow: "failed: " + hostile}),
		"streams/00000003": storedStream(t, Stats{ID: 3, Kind: "video/segment", MediaID: 13, Track: "13-video", Frames: 1, Bytes: 1234, LastSeen: t0}),
	}
}

func page(t *testing.T, h *plugintest.Harness, hook string, user int64) (int, http.Header, string) {
	t.Helper()
	resp, err := h.Route(hook, &plugin.Request{Method: "GET", Path: "/api/v1/plugins/stream-stats/" + hook, UserID: user, Authenticated: user != 0})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status, resp.Header, string(resp.Body)
}

var refreshMeta = regexp.MustCompile(`<meta name="dim-refresh" content="(\d+)">`)

func TestPage(t *testing.T) {
	_, h := start(t, 0, plugintest.WithKV(uiStore(t)),
		plugintest.WithSettings("user", 0, userValues(t, nil)),
		plugintest.WithSettings("user", 2, userValues(t, map[string]any{"refresh_seconds": 2})))
	status, hdr, body := page(t, h, "page", 2)
	if status != 200 || hdr.Get("Content-Type") != "text/html; charset=utf-8" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %v", status, hdr)
	}
	for _, want := range []string{
		`<meta name="dim-refresh" content="2">`,
		"<script>" + plugin.BridgeScript + "</script>",
		`dim.navigate("/media/" + b.getAttribute("data-media"))`,
		`var(--dim-bg, #fff)`, `var(--dim-text, #1c1f26)`, `var(--dim-accent, #c46a00)`, `var(--dim-font, system-ui, sans-serif)`, `var(--dim-surface, #f4f5f8)`,
		"3 streams, newest first. Reloads every 2 s.",
		// Stream 1: 3.6 MB, 4800 kbit/s, its media 42.
		`<td class="num">1</td><td>video/segment</td><td>42-video</td><td>avc1.64001f</td>`,
		`<td class="num">6</td><td class="num">7</td><td class="num">3.6</td>`,
		`<td class="num">4800</td>`,
		`<td>completed</td>`,
		`<button type="button" data-media="42">Media 42</button>`,
		`<button type="button" data-media="13">Media 13</button>`,
		`<td>running</td>`,
		// The hostile values, escaped.
		`<td>&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;</td>`,
		`<td>&lt;/style&gt;&lt;style&gt;*{display:none}</td>`,
		`<td>failed: &#34;&gt;&lt;script&gt;alert(1)`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	for _, bad := range []string{"<script>alert", "<img", "</style><style>"} {
		if strings.Contains(body, bad) {
			t.Errorf("the page holds %s unescaped", bad)
		}
	}
	// Newest first; a stream without a media id gets no button.
	if i1, i3 := strings.Index(body, `data-media="42"`), strings.Index(body, `data-media="13"`); i3 < 0 || i1 < i3 {
		t.Errorf("stream 3 is not above stream 1")
	}
	if n := strings.Count(body, "<button"); n != 2 {
		t.Errorf("%d buttons, want 2 (stream 2 has no media id)", n)
	}
}

// TestPageRefresh: each user's own refresh_seconds, a change applying to
// the next page (no restart), and the default without settings.
func TestPageRefresh(t *testing.T) {
	_, h := start(t, 0,
		plugintest.WithSettings("user", 0, userValues(t, nil)),
		plugintest.WithSettings("user", 2, userValues(t, map[string]any{"refresh_seconds": 2})),
		plugintest.WithSettings("user", 3, userValues(t, map[string]any{"refresh_seconds": 60})))
	refresh := func(hook string, user int64) string {
		t.Helper()
		_, _, body := page(t, h, hook, user)
		m := refreshMeta.FindAllStringSubmatch(body, -1)
		if len(m) != 1 {
			t.Fatalf("%d dim-refresh metas in:\n%s", len(m), body)
		}
		return m[0][1]
	}
	for _, tc := range []struct {
		hook string
		user int64
		want string
	}{
		{"page", 2, "2"}, {"card", 2, "2"}, {"page", 3, "60"}, {"page", 4, "5"}, {"card", 4, "5"},
	} {
		if got := refresh(tc.hook, tc.user); got != tc.want {
			t.Errorf("%s for user %d: refresh %s, want %s", tc.hook, tc.user, got, tc.want)
		}
	}
	h.SetSettings("user", 2, userValues(t, map[string]any{"refresh_seconds": 9}))
	if got := refresh("page", 2); got != "9" {
		t.Errorf("after user 2 chose 9: refresh %s", got)
	}

	// Without settings (a daemon that has none), the default; values out
	// of bounds (which the daemon would refuse) are clamped.
	_, bare := start(t, 0)
	if _, _, body := page(t, bare, "page", 2); !strings.Contains(body, `<meta name="dim-refresh" content="5">`) {
		t.Errorf("without settings:\n%s", body)
	}
	_, odd := start(t, 0, plugintest.WithSettings("user", 0, map[string]any{"refresh_seconds": 3600}))
	if _, _, body := page(t, odd, "page", 2); !strings.Contains(body, `<meta name="dim-refresh" content="60">`) {
		t.Errorf("refresh 3600 not clamped:\n%s", body)
	}
}

func TestCard(t *testing.T) {
	_, h := start(t, 0, plugintest.WithKV(uiStore(t)), plugintest.WithSettings("user", 0, userValues(t, nil)))
	status, _, body := page(t, h, "card", 2)
	if want := `<p class="card"><strong>3</strong> streams, <strong>11</strong> frames, <strong>4.0</strong> MB</p>`; status != 200 || !strings.Contains(body, want) {
		t.Errorf("%d, want %s in:\n%s", status, want, body)
	}
	if !strings.Contains(body, "<script>"+plugin.BridgeScript+"</script>") {
		t.Error("the card has no bridge")
	}
	_, empty := start(t, 0)
	if _, _, body := page(t, empty, "card", 2); !strings.Contains(body, `<strong>0</strong> streams, <strong>0</strong> frames, <strong>0.0</strong> MB`) {
		t.Errorf("empty card:\n%s", body)
	}
}

func TestPagesNeedAUser(t *testing.T) {
	_, h := start(t, 0, plugintest.WithKV(uiStore(t)))
	for _, hook := range []string{"page", "card"} {
		status, hdr, body := page(t, h, hook, 0)
		if status != http.StatusUnauthorized || hdr.Get("Content-Type") != "text/html; charset=utf-8" || strings.Contains(body, "42-video") {
			t.Errorf("%s without a user: %d %v %s", hook, status, hdr, body)
		}
	}
}

// TestManifestPages: plugin.toml declares both pages, each served by its
// hook (manifest.Load checks that a GET route hook answers it).
func TestManifestPages(t *testing.T) {
	m, err := manifest.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	want := []manifest.Page{
		{ID: "stats", Title: "Stream statistics", Slot: manifest.SlotNav, Route: "/api/v1/plugins/stream-stats/page"},
		{ID: "summary", Title: "Streams", Slot: manifest.SlotDashboardCard, Route: "/api/v1/plugins/stream-stats/card"},
	}
	if fmt.Sprint(m.UI.Pages) != fmt.Sprint(want) {
		t.Errorf("pages %+v, want %+v", m.UI.Pages, want)
	}
}
