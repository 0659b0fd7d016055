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

const dashboard = `{"Recently added":[{"id":13,"name":"Alien","poster_path":"p/13.jpg"}]}`

func view(t *testing.T, h *plugintest.Harness, id int, name string, status int) {
	t.Helper()
	req := &plugin.Request{Method: "GET", Path: fmt.Sprintf("/api/v1/media/%d", id), Params: []plugin.Param{{Name: "id", Value: fmt.Sprint(id)}}}
	body := fmt.Sprintf(`{"id":%d,"name":%q,"poster_path":"p/%d.jpg","rating":"PG","year":2000}`, id, name, id)
	if status != 200 {
		body = `{"error":"NotFoundError"}`
	}
	if err := h.Observe("count-views", req, &plugin.Response{Status: status, Header: http.Header{}, Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
}

// trendingRow runs the dashboard hook and returns the rows, with the
// Trending row's names.
func trendingRow(t *testing.T, h *plugintest.Harness, body string) (map[string]json.RawMessage, []string) {
	t.Helper()
	resp := &plugin.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(body)}
	if err := h.Response("trending", &plugin.Request{Method: "GET", Path: "/api/v1/dashboard"}, resp); err != nil {
		t.Fatal(err)
	}
	var rows map[string]json.RawMessage
	if err := json.Unmarshal(resp.Body, &rows); err != nil {
		t.Fatalf("%v: %s", err, resp.Body)
	}
	var cards []struct {
		ID         int
		Name       string
		PosterPath string `json:"poster_path"`
	}
	json.Unmarshal(rows[RowTitle], &cards)
	var names []string
	for _, c := range cards {
		if c.PosterPath != fmt.Sprintf("p/%d.jpg", c.ID) {
			t.Errorf("card %+v lost its poster", c)
		}
		names = append(names, c.Name)
	}
	return rows, names
}

func TestTrending(t *testing.T) {
	h := plugintest.Start(t, &rows{})
	if rows, names := trendingRow(t, h, dashboard); names != nil || len(rows) != 1 {
		t.Fatalf("no views yet: got rows %s", rows)
	}
	for _, v := range []struct {
		id     int
		name   string
		times  int
		status int
	}{
		{42, "Hitchhiker", 3, 200},
		{7, "Seven Samurai", 1, 200},
		{99, "Toy Story", 3, 200},
		{1, "Spirited Away", 2, 200},
		{5, "Missing", 9, 404}, // errors are not views
		{2, "Two", 1, 200},
		{3, "Three", 1, 200},
	} {
		for range v.times {
			view(t, h, v.id, v.name, v.status)
		}
	}
	rows, names := trendingRow(t, h, dashboard)
	want := "Hitchhiker|Toy Story|Spirited Away|Two|Three" // by views, then by id; five at most
	if strings.Join(names, "|") != want {
		t.Errorf("Trending = %q, want %s", names, want)
	}
	if string(rows["Recently added"]) != `[{"id":13,"name":"Alien","poster_path":"p/13.jpg"}]` {
		t.Errorf("Dim's own row changed: %s", rows["Recently added"])
	}
	if got := string(h.KV()["media/42"]); got != `{"id":42,"name":"Hitchhiker","poster_path":"p/42.jpg","views":3}` {
		t.Errorf("KV media/42 = %s", got)
	}
	if _, ok := h.KV()["media/5"]; ok {
		t.Error("counted a 404")
	}
}

func TestTrendingSurvivesRestart(t *testing.T) {
	kv := map[string][]byte{
		"media/7":  []byte(`{"id":7,"name":"Seven Samurai","poster_path":"p/7.jpg","views":2}`),
		"media/42": []byte(`{"id":42,"name":"Hitchhiker","poster_path":"p/42.jpg","views":5}`),
		"media/x":  []byte(`not json`),
	}
	h := plugintest.Start(t, &rows{}, plugintest.WithKV(kv))
	if _, names := trendingRow(t, h, dashboard); strings.Join(names, "|") != "Hitchhiker|Seven Samurai" {
		t.Errorf("Trending = %q", names)
	}
	view(t, h, 7, "Seven Samurai", 200)
	view(t, h, 7, "Seven Samurai", 200)
	view(t, h, 7, "Seven Samurai", 200)
	if _, names := trendingRow(t, h, dashboard); strings.Join(names, "|") != "Seven Samurai|Hitchhiker" {
		t.Errorf("Trending = %q", names)
	}
}

func TestLeavesOtherAnswersAlone(t *testing.T) {
	h := plugintest.Start(t, &rows{}, plugintest.WithKV(map[string][]byte{"media/42": []byte(`{"id":42,"name":"Hitchhiker","views":1}`)}))
	for _, resp := range []*plugin.Response{
		{Status: 500, Header: http.Header{}, Body: []byte(`{"error":"db"}`)},
		{Status: 200, Header: http.Header{}, Body: []byte(`["not","a","map"]`)},
	} {
		before := string(resp.Body)
		if err := h.Response("trending", &plugin.Request{Method: "GET", Path: "/api/v1/dashboard"}, resp); err != nil {
			t.Fatal(err)
		}
		if string(resp.Body) != before {
			t.Errorf("changed %q into %q", before, resp.Body)
		}
	}
}
