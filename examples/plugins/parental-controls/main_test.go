package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// ratings is a KV as the plugin leaves it after some learning: the
// ratings of four media.
func ratings() map[string][]byte {
	return map[string][]byte{
		"rating/42": []byte("PG"),
		"rating/13": []byte("R"),
		"rating/7":  []byte("NR"),
		"rating/5":  []byte("PG-13"),
	}
}

// schemas compiles the plugin's settings schemas as the daemon does at
// install.
func schemas(t *testing.T) *settings.Set {
	t.Helper()
	m, err := manifest.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	set, err := settings.LoadDir(".", m.Settings)
	if err != nil {
		t.Fatal(err)
	}
	if set.Global == nil || set.User == nil {
		t.Fatal("plugin.toml declares no global or no user settings")
	}
	return set
}

// effective validates stored values against a scope's schema and returns
// what the daemon hands the plugin: the defaults overlaid with them.
func effective(t *testing.T, sc *settings.Scope, stored map[string]any) map[string]any {
	t.Helper()
	if err := sc.Schema.Validate(stored); err != nil {
		t.Fatalf("settings %v refused: %v", stored, err)
	}
	return sc.Schema.Effective(stored)
}

// start runs the plugin with the owner's stored settings and each user's
// own (nil: nothing set, the schemas' defaults apply).
func start(t *testing.T, kv map[string][]byte, owner map[string]any, own map[int64]map[string]any) *plugintest.Harness {
	t.Helper()
	set := schemas(t)
	opts := []plugintest.Option{
		plugintest.WithKV(kv),
		plugintest.WithSettings("global", 0, effective(t, set.Global, owner)),
		plugintest.WithSettings("user", 0, effective(t, set.User, nil)),
	}
	for u, v := range own {
		opts = append(opts, plugintest.WithSettings("user", u, effective(t, set.User, v)))
	}
	return plugintest.Start(t, &parental{}, opts...)
}

func mediaReq(route, id string, user int64) *plugin.Request {
	path := strings.Replace(route, ":id", id, 1)
	return &plugin.Request{Method: "GET", Route: route, Path: path,
		Params: []plugin.Param{{Name: "id", Value: id}}, UserID: user, Authenticated: user != 0}
}

func TestGuard(t *testing.T) {
	h := start(t, ratings(), nil, nil) // the default limits: user 2 at PG, anonymous at PG-13
	for _, tc := range []struct {
		name   string
		hook   string
		user   int64 // 0: not logged in
		media  string
		denied bool
	}{
		{"owner sees R", "guard-media", 1, "13", false},
		{"owner sees unknown", "guard-media", 1, "1234", false},
		{"kid sees PG", "guard-media", 2, "42", false},
		{"kid denied R", "guard-media", 2, "13", true},
		{"kid denied PG-13", "guard-media", 2, "5", true},
		{"kid denied not rated", "guard-media", 2, "7", true},
		{"kid denied unknown media", "guard-media", 2, "1234", true},
		{"kid denied R stream", "guard-stream", 2, "13", true},
		{"kid streams PG", "guard-stream", 2, "42", false},
		{"anonymous sees PG-13", "guard-media", 0, "5", false},
		{"anonymous denied R", "guard-media", 0, "13", true},
		{"other users unrestricted", "guard-stream", 3, "13", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			route := "/api/v1/media/:id"
			if tc.hook == "guard-stream" {
				route = "/api/v1/stream/:id/manifest"
			}
			resp, err := h.Request(tc.hook, mediaReq(route, tc.media, tc.user))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.denied {
				if resp != nil {
					t.Fatalf("answered %d %s, want the request to go through", resp.Status, resp.Body)
				}
				return
			}
			if resp == nil || resp.Status != http.StatusForbidden || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %+v, want a 403 JSON answer", resp)
			}
			var body map[string]any
			if err := json.Unmarshal(resp.Body, &body); err != nil || body["error"] != "blocked by parental controls" || fmt.Sprint(body["media_id"]) != tc.media {
				t.Errorf("body %s", resp.Body)
			}
		})
	}
}

func TestLearnsRatingsFromMediaPages(t *testing.T) {
	h := start(t, nil, nil, nil)
	req := mediaReq("/api/v1/media/:id", "99", 2)
	if resp, _ := h.Request("guard-media", req); resp == nil || resp.Status != 403 {
		t.Fatalf("unknown rating: got %+v, want 403", resp)
	}
	// The owner opens the page: the plugin sees Dim's answer.
	page := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte(`{"id":99,"name":"Toy Story","rating":"G"}`)}
	if err := h.Observe("learn-media", mediaReq("/api/v1/media/:id", "99", 1), page); err != nil {
		t.Fatal(err)
	}
	if got := string(h.KV()["rating/99"]); got != "G" {
		t.Errorf("rating/99 = %q", got)
	}
	if resp, err := h.Request("guard-media", req); err != nil || resp != nil {
		t.Errorf("after learning G: got %+v, %v; want the kid let through", resp, err)
	}
	// Errors teach nothing.
	notFound := &plugin.Response{Status: 404, Header: http.Header{}, Body: []byte(`{"id":98,"rating":"G"}`)}
	h.Observe("learn-media", mediaReq("/api/v1/media/:id", "98", 1), notFound)
	if _, ok := h.KV()["rating/98"]; ok {
		t.Error("learned from a 404")
	}
}

const listing = `{"Movies":[{"id":13,"name":"Alien","poster_path":"p/13.jpg","rating":"R"},` +
	`{"id":7,"name":"Seven Samurai","poster_path":"p/7.jpg","rating":"NR"},` +
	`{"id":42,"name":"The Hitchhiker's Guide to the Galaxy","poster_path":"p/42.jpg","rating":"PG"}]}`

func TestFilterLibrary(t *testing.T) {
	for _, tc := range []struct {
		name string
		user int64
		want []string
	}{
		{"owner", 1, []string{"Alien", "Seven Samurai", "The Hitchhiker's Guide to the Galaxy"}},
		{"kid", 2, []string{"The Hitchhiker's Guide to the Galaxy"}},
		{"anonymous", 0, []string{"The Hitchhiker's Guide to the Galaxy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil, nil, nil)
			resp := &plugin.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(listing)}
			req := &plugin.Request{Method: "GET", Path: "/api/v1/library/1/media", UserID: tc.user, Authenticated: tc.user != 0}
			if err := h.Response("filter-library", req, resp); err != nil {
				t.Fatal(err)
			}
			var rows map[string][]struct{ Name string }
			if err := json.Unmarshal(resp.Body, &rows); err != nil {
				t.Fatalf("%v: %s", err, resp.Body)
			}
			var got []string
			for _, c := range rows["Movies"] {
				got = append(got, c.Name)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("listing = %q, want %q", got, tc.want)
			}
			// Every listing teaches the ratings, whoever asked.
			if kv := h.KV(); string(kv["rating/13"]) != "R" || string(kv["rating/7"]) != "NR" || string(kv["rating/42"]) != "PG" {
				t.Errorf("KV = %q", kv)
			}
		})
	}
}

func TestFilterDashboard(t *testing.T) {
	h := start(t, ratings(), nil, nil)
	dash := `{"Recently added":[{"id":13,"name":"Alien"},{"id":42,"name":"Hitchhiker"}],"Trending":[{"id":7,"name":"Seven Samurai"}]}`
	resp := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte(dash)}
	if err := h.Response("filter-dashboard", &plugin.Request{Method: "GET", Path: "/api/v1/dashboard", UserID: 2, Authenticated: true}, resp); err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Body); got != `{"Recently added":[{"id":42,"name":"Hitchhiker"}]}` {
		t.Errorf("kid's dashboard = %s", got)
	}
	if resp.Header.Get("X-Parental-Controls") != "hid 2 item(s) above PG" {
		t.Errorf("header %q", resp.Header)
	}
	owner := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte(dash)}
	if err := h.Response("filter-dashboard", &plugin.Request{Method: "GET", Path: "/api/v1/dashboard", UserID: 1, Authenticated: true}, owner); err != nil {
		t.Fatal(err)
	}
	if string(owner.Body) != dash || owner.Header.Get("X-Parental-Controls") != "" {
		t.Errorf("owner's dashboard changed: %s", owner.Body)
	}
}

// TestSettingsSchemas checks the schemas the daemon validates writes
// against: their defaults, and what they accept and refuse.
func TestSettingsSchemas(t *testing.T) {
	set := schemas(t)
	if got, want := fmt.Sprint(set.Global.Schema.Defaults()), "map[anonymous:PG-13 limits:map[2:PG]]"; got != want {
		t.Errorf("global defaults %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(set.User.Schema.Defaults()), "map[max_rating:]"; got != want {
		t.Errorf("user defaults %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name   string
		scope  *settings.Scope
		values string
		want   string // in the refusal; "" if accepted
	}{
		{"limits", set.Global, `{"limits": {"2": "G", "3": "NC-17", "922337203685477580": "R"}}`, ""},
		{"no limits", set.Global, `{"limits": {}}`, ""},
		{"every rating", set.Global, `{"anonymous": "NC-17"}`, ""},
		{"user name", set.Global, `{"limits": {"bob": "PG"}}`, `limits.bob: is not allowed here`},
		{"user 0", set.Global, `{"limits": {"0": "PG"}}`, `limits["0"]: is not allowed here`},
		{"leading zero", set.Global, `{"limits": {"02": "PG"}}`, `limits["02"]: is not allowed here`},
		{"negative", set.Global, `{"limits": {"-2": "PG"}}`, `limits["-2"]: is not allowed here`},
		{"too long", set.Global, `{"limits": {"12345678901234567890": "PG"}}`, `limits["12345678901234567890"]: is not allowed here`},
		{"anonymous key", set.Global, `{"limits": {"anonymous": "PG"}}`, `limits.anonymous: is not allowed here`},
		{"unknown rating", set.Global, `{"limits": {"2": "XXX"}}`, `limits["2"]: must be one of "G", "PG", "PG-13", "R", "NC-17"`},
		{"lowercase rating", set.Global, `{"limits": {"2": "pg"}}`, `limits["2"]: must be one of`},
		{"no limit for anonymous", set.Global, `{"anonymous": ""}`, `anonymous: must be one of`},
		{"not a map", set.Global, `{"limits": ["PG"]}`, `limits: must be an object`},
		{"unknown setting", set.Global, `{"max_rating": "PG"}`, `max_rating: is not a known setting`},
		{"own limit", set.User, `{"max_rating": "PG-13"}`, ""},
		{"no own limit", set.User, `{"max_rating": ""}`, ""},
		{"own unknown rating", set.User, `{"max_rating": "TV-MA"}`, `max_rating: must be one of "", "G"`},
		{"user sets limits", set.User, `{"limits": {"2": "R"}}`, `limits: is not a known setting`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v map[string]any
			if err := json.Unmarshal([]byte(tc.values), &v); err != nil {
				t.Fatal(err)
			}
			err := tc.scope.Schema.Validate(v)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want a refusal with %s", err, tc.want)
			}
		})
	}
}

// limitFor returns the limit the plugin applies to user (0: anonymous), as
// its 403 for a media item of unknown rating names it; "" if it lets the
// request through.
func limitFor(t *testing.T, h *plugintest.Harness, user int64) string {
	t.Helper()
	resp, err := h.Request("guard-media", mediaReq("/api/v1/media/:id", "1234", user))
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil {
		return ""
	}
	var body struct{ Limit string }
	if err := json.Unmarshal(resp.Body, &body); err != nil || resp.Status != http.StatusForbidden {
		t.Fatalf("%d %s", resp.Status, resp.Body)
	}
	return body.Limit
}

// TestEffectiveLimit: a user's limit is the stricter of the owner's and
// their own; their own cannot loosen the owner's.
func TestEffectiveLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		owner     map[string]any
		own       map[string]any // user 2's
		user      int64
		wantLimit string
	}{
		{"owner's default", nil, nil, 2, "PG"},
		{"own stricter", nil, map[string]any{"max_rating": "G"}, 2, "G"},
		{"own looser is ignored", nil, map[string]any{"max_rating": "R"}, 2, "PG"},
		{"own equal", nil, map[string]any{"max_rating": "PG"}, 2, "PG"},
		{"own without the owner's", map[string]any{"limits": map[string]any{}}, map[string]any{"max_rating": "PG-13"}, 2, "PG-13"},
		{"neither", map[string]any{"limits": map[string]any{}}, nil, 2, ""},
		{"not listed", nil, nil, 3, ""},
		{"owner's NC-17", map[string]any{"limits": map[string]any{"2": "NC-17"}}, map[string]any{"max_rating": ""}, 2, "NC-17"},
		{"owner restricts user 1 too", map[string]any{"limits": map[string]any{"1": "R"}}, nil, 1, "R"},
		{"anonymous default", nil, nil, 0, "PG-13"},
		{"anonymous set", map[string]any{"anonymous": "G"}, nil, 0, "G"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil, tc.owner, map[int64]map[string]any{2: tc.own})
			if got := limitFor(t, h, tc.user); got != tc.wantLimit {
				t.Errorf("limit %q, want %q", got, tc.wantLimit)
			}
		})
	}
}

// TestSettingsChangeWithoutRestart: changes apply from the next request,
// in the owner's settings and in a user's own, although the plugin had
// read (and cached) the old values.
func TestSettingsChangeWithoutRestart(t *testing.T) {
	set := schemas(t)
	h := start(t, ratings(), nil, nil)
	check := func(when string, want map[int64]string) {
		t.Helper()
		for user, limit := range want {
			if got := limitFor(t, h, user); got != limit {
				t.Errorf("%s: user %d's limit is %q, want %q", when, user, got, limit)
			}
		}
	}
	check("at start", map[int64]string{0: "PG-13", 2: "PG", 3: ""})

	h.SetSettings("global", 0, effective(t, set.Global, map[string]any{"limits": map[string]any{"3": "G"}, "anonymous": "PG"}))
	check("after the owner's change", map[int64]string{0: "PG", 2: "", 3: "G"})
	if resp, _ := h.Request("guard-media", mediaReq("/api/v1/media/:id", "13", 2)); resp != nil {
		t.Errorf("user 2, no longer restricted, was denied R: %d %s", resp.Status, resp.Body)
	}

	h.SetSettings("user", 2, effective(t, set.User, map[string]any{"max_rating": "PG"}))
	h.SetSettings("user", 3, effective(t, set.User, map[string]any{"max_rating": "R"}))
	check("after the users' own changes", map[int64]string{0: "PG", 2: "PG", 3: "G"})
	if resp, _ := h.Request("guard-media", mediaReq("/api/v1/media/:id", "5", 2)); resp == nil || resp.Status != http.StatusForbidden {
		t.Errorf("user 2 at their own PG opened PG-13: %+v", resp)
	}

	h.SetSettings("user", 2, effective(t, set.User, nil)) // back to the default: no limit of their own
	check("after user 2 reset theirs", map[int64]string{2: "", 3: "G"})

	logs := strings.Join(h.Logs(), "\n")
	for _, want := range []string{"INFO settings changed scope=global user=0", "INFO settings changed scope=user user=2"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %q in the log:\n%s", want, logs)
		}
	}
}

// TestSettingsChangeUnderLoad: requests race changes (run it with -race);
// once the changes stop, the last values apply.
func TestSettingsChangeUnderLoad(t *testing.T) {
	set := schemas(t)
	h := start(t, nil, nil, nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, user := range []int64{0, 2, 3} {
					if _, err := h.Request("guard-media", mediaReq("/api/v1/media/:id", "42", user)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	ratings := []string{"G", "PG", "PG-13", "R", "NC-17"}
	for i := 0; i < 50; i++ {
		r := ratings[i%len(ratings)]
		h.SetSettings("global", 0, effective(t, set.Global, map[string]any{"limits": map[string]any{"2": r, "3": r}, "anonymous": r}))
		h.SetSettings("user", 3, effective(t, set.User, map[string]any{"max_rating": ratings[(i+2)%len(ratings)]}))
	}
	close(stop)
	wg.Wait()
	// The last values: owner NC-17 for all (i = 49), user 3's own PG (i+2 = 51).
	for user, want := range map[int64]string{0: "NC-17", 2: "NC-17", 3: "PG"} {
		if got := limitFor(t, h, user); got != want {
			t.Errorf("user %d: limit %q, want %q", user, got, want)
		}
	}
}

// TestSettingsUnavailable: when the settings cannot be read, the enforcing
// hooks fail (so the daemon answers 503/502 for these fail-closed hooks)
// rather than let the request through.
func TestSettingsUnavailable(t *testing.T) {
	set := schemas(t)
	// Global settings only: reading user 2's own fails.
	h := plugintest.Start(t, &parental{}, plugintest.WithSettings("global", 0, effective(t, set.Global, nil)))
	if resp, err := h.Request("guard-media", mediaReq("/api/v1/media/:id", "42", 2)); err == nil {
		t.Errorf("guard-media answered %+v without user settings, want an error", resp)
	}
	resp := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte(listing)}
	if err := h.Response("filter-library", &plugin.Request{Method: "GET", Path: "/api/v1/library/1/media", UserID: 2, Authenticated: true}, resp); err == nil {
		t.Errorf("filter-library let the listing through without user settings: %s", resp.Body)
	}
	// Anonymous requests need the owner's settings only.
	if resp, err := h.Request("guard-media", mediaReq("/api/v1/media/:id", "42", 0)); err != nil || resp != nil {
		t.Errorf("anonymous PG: %+v, %v", resp, err)
	}
}

// TestOldLimitsIgnored: limits that version 1 kept in the key-value store
// are not applied; the operator is told how to set them.
func TestOldLimitsIgnored(t *testing.T) {
	h := start(t, map[string][]byte{"seeded": []byte("1"), "limit/3": []byte("G"), "limit/anonymous": []byte("R")}, nil, nil)
	if got := limitFor(t, h, 3); got != "" {
		t.Errorf("user 3's old limit applies: %q", got)
	}
	logs := strings.Join(h.Logs(), "\n")
	if !strings.Contains(logs, `WARN limits kept in the key-value store by version 1 are not used`) ||
		!strings.Contains(logs, `set_with=dimplugctl config set parental-controls 'limits={"3":"G"}' anonymous=R`) {
		t.Errorf("log:\n%s", logs)
	}
}
