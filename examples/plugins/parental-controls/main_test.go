package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// store is a KV as the plugin leaves it after a first start and some
// learning: default limits, plus the ratings of four media.
func store() map[string][]byte {
	return map[string][]byte{
		"seeded":          []byte("1"),
		"limit/2":         []byte("PG"),
		"limit/anonymous": []byte("PG-13"),
		"rating/42":       []byte("PG"),
		"rating/13":       []byte("R"),
		"rating/7":        []byte("NR"),
		"rating/5":        []byte("PG-13"),
	}
}

func mediaReq(route, id string, user int64) *plugin.Request {
	path := strings.Replace(route, ":id", id, 1)
	return &plugin.Request{Method: "GET", Route: route, Path: path,
		Params: []plugin.Param{{Name: "id", Value: id}}, UserID: user, Authenticated: user != 0}
}

func TestGuard(t *testing.T) {
	h := plugintest.Start(t, &parental{}, plugintest.WithKV(store()))
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

func TestSeedsDefaultLimitsOnce(t *testing.T) {
	h := plugintest.Start(t, &parental{})
	kv := h.KV()
	if string(kv["limit/2"]) != "PG" || string(kv["limit/anonymous"]) != "PG-13" || string(kv["seeded"]) != "1" {
		t.Fatalf("KV after first start: %q", kv)
	}
	// An owner who lifted the kid's limit does not get it back on restart.
	delete(kv, "limit/2")
	h2 := plugintest.Start(t, &parental{}, plugintest.WithKV(kv))
	if _, ok := h2.KV()["limit/2"]; ok {
		t.Errorf("limit/2 re-seeded: %q", h2.KV())
	}
}

func TestLearnsRatingsFromMediaPages(t *testing.T) {
	h := plugintest.Start(t, &parental{}, plugintest.WithKV(map[string][]byte{"seeded": []byte("1"), "limit/2": []byte("PG")}))
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
			h := plugintest.Start(t, &parental{}, plugintest.WithKV(map[string][]byte{"seeded": []byte("1"), "limit/2": []byte("PG"), "limit/anonymous": []byte("PG-13")}))
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
	h := plugintest.Start(t, &parental{}, plugintest.WithKV(store()))
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

func TestLimitsAPI(t *testing.T) {
	h := plugintest.Start(t, &parental{}, plugintest.WithKV(store()))
	call := func(method, user string, as int64, body string) (int, map[string]string) {
		t.Helper()
		hook := "limits-get"
		if method == "PUT" {
			hook = "limits-put"
		}
		resp, err := h.Route(hook, &plugin.Request{Method: method, Path: "/api/v1/plugins/parental-controls/limits/" + user,
			Params: []plugin.Param{{Name: "user", Value: user}}, UserID: as, Authenticated: as != 0, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]string
		json.Unmarshal(resp.Body, &out)
		return resp.Status, out
	}
	for _, tc := range []struct {
		method, user string
		as           int64
		body         string
		status       int
		limit        string
	}{
		{"GET", "me", 2, "", 200, "PG"},
		{"GET", "2", 1, "", 200, "PG"},
		{"GET", "1", 1, "", 200, "none"},
		{"GET", "anonymous", 0, "", 200, "PG-13"},
		{"GET", "1", 2, "", 403, ""},
		{"PUT", "2", 2, `{"limit":"R"}`, 403, ""},
		{"PUT", "2", 1, `{"limit":"XXX"}`, 400, ""},
		{"PUT", "bob", 1, `{"limit":"G"}`, 400, ""},
		{"PUT", "2", 1, `{"limit":"pg-13"}`, 200, "PG-13"},
		{"PUT", "3", 1, `{"limit":"G"}`, 200, "G"},
		{"PUT", "anonymous", 1, `{"limit":"none"}`, 200, "none"},
	} {
		status, out := call(tc.method, tc.user, tc.as, tc.body)
		if status != tc.status || (tc.limit != "" && out["limit"] != tc.limit) {
			t.Errorf("%s %s as %d %s: %d %v, want %d limit %q", tc.method, tc.user, tc.as, tc.body, status, out, tc.status, tc.limit)
		}
	}
	kv := h.KV()
	if string(kv["limit/2"]) != "PG-13" || string(kv["limit/3"]) != "G" {
		t.Errorf("KV = %q", kv)
	}
	if _, ok := kv["limit/anonymous"]; ok {
		t.Error("limit/anonymous not deleted")
	}
	// The new limits apply at once: user 3 is now held to G.
	if resp, _ := h.Request("guard-media", mediaReq("/api/v1/media/:id", "42", 3)); resp == nil || resp.Status != 403 {
		t.Errorf("user 3 at G opened a PG film: %+v", resp)
	}
}
