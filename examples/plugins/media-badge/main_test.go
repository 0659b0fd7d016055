package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

func TestBadge(t *testing.T) {
	h := plugintest.Start(t, &badge{}, plugintest.WithKV(map[string][]byte{"views/42": []byte("9")}))
	req := &plugin.Request{Method: "GET", Path: "/api/v1/media/42", Params: []plugin.Param{{Name: "id", Value: "42"}}}
	resp := &plugin.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":42,"name":"Dune"}`)}
	if err := h.Response("badge", req, resp); err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("X-Dim-Badge"); got != "plugin-approved" {
		t.Errorf("X-Dim-Badge = %q", got)
	}
	var body map[string]any
	if err := json.Unmarshal(resp.Body, &body); err != nil {
		t.Fatal(err)
	}
	if body["views"] != float64(10) || body["name"] != "Dune" || body["plugin_badge"] != "plugin-approved" {
		t.Errorf("body = %s", resp.Body)
	}
	if got := string(h.KV()["views/42"]); got != "10" {
		t.Errorf("KV views/42 = %q, want 10", got)
	}
	if logs := h.Logs(); len(logs) == 0 || logs[0] != "INFO media-badge ready sandboxed=false" {
		t.Errorf("logs = %q", logs)
	}
}

func TestBadgeLeavesErrorsAndNonJSONAlone(t *testing.T) {
	h := plugintest.Start(t, &badge{})
	req := &plugin.Request{Method: "GET", Path: "/api/v1/media/1", Params: []plugin.Param{{Name: "id", Value: "1"}}}
	notFound := &plugin.Response{Status: 404, Header: http.Header{}, Body: []byte(`{"error":"no such media"}`)}
	if err := h.Response("badge", req, notFound); err != nil {
		t.Fatal(err)
	}
	if notFound.Header.Get("X-Dim-Badge") != "" || string(notFound.Body) != `{"error":"no such media"}` {
		t.Errorf("a 404 was changed: %+v", notFound)
	}
	text := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte("plain")}
	if err := h.Response("badge", req, text); err != nil {
		t.Fatal(err)
	}
	if string(text.Body) != "plain" || text.Header.Get("X-Dim-Badge") == "" {
		t.Errorf("non-JSON body: %+v", text)
	}
}
