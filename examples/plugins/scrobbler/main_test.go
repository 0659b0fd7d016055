package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// clock is a fake time source that advances a minute per reading.
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	c.t = c.t.Add(time.Minute)
	return c.t
}

var start = time.Date(2025, 1, 2, 20, 0, 0, 0, time.UTC)

func post(t *testing.T, h *plugintest.Harness, user int64, media, offset string, status int) {
	t.Helper()
	req := &plugin.Request{Method: "POST", Path: "/api/v1/media/" + media + "/progress", RawQuery: "offset=" + offset,
		Params: []plugin.Param{{Name: "id", Value: media}}, UserID: user, Authenticated: user != 0}
	if err := h.Observe("progress", req, &plugin.Response{Status: status, Header: http.Header{}}); err != nil {
		t.Fatal(err)
	}
}

type history struct {
	UserID  int64   `json:"user_id"`
	History []entry `json:"history"`
}

func getHistory(t *testing.T, h *plugintest.Harness, user int64) (int, history) {
	t.Helper()
	resp, err := h.Route("history", &plugin.Request{Method: "GET", Path: "/api/v1/plugins/scrobbler/history", UserID: user, Authenticated: user != 0})
	if err != nil {
		t.Fatal(err)
	}
	var out history
	if resp.Status == 200 {
		if err := json.Unmarshal(resp.Body, &out); err != nil {
			t.Fatalf("%v: %s", err, resp.Body)
		}
	}
	return resp.Status, out
}

func TestRecordsProgress(t *testing.T) {
	c := &clock{t: start}
	h := plugintest.Start(t, &scrobbler{now: c.now})
	for _, p := range []struct {
		user          int64
		media, offset string
		status        int
	}{
		{2, "42", "15", 200},
		{2, "42", "30", 200},
		{2, "99", "15", 200},
		{1, "13", "600", 200},
		{0, "42", "45", 200},   // not logged in: ignored
		{2, "42", "99", 401},   // Dim refused it: ignored
		{2, "42", "soon", 200}, // no offset: ignored
		{2, "42", "-5", 200},
		{2, "x", "5", 200},
	} {
		post(t, h, p.user, p.media, p.offset, p.status)
	}
	status, kid := getHistory(t, h, 2)
	want := []entry{
		{MediaID: 99, Offset: 15, Updated: start.Add(3 * time.Minute), Posts: 1},
		{MediaID: 42, Offset: 30, Updated: start.Add(2 * time.Minute), Posts: 2},
	}
	if status != 200 || kid.UserID != 2 || fmt.Sprint(kid.History) != fmt.Sprint(want) {
		t.Errorf("kid's history: %d %+v, want %+v", status, kid, want)
	}
	if _, owner := getHistory(t, h, 1); len(owner.History) != 1 || owner.History[0].MediaID != 13 {
		t.Errorf("owner's history: %+v", owner)
	}
	if _, other := getHistory(t, h, 3); other.History == nil || len(other.History) != 0 {
		t.Errorf("user 3's history: %+v, want an empty list", other)
	}
	if status, _ := getHistory(t, h, 0); status != 401 {
		t.Errorf("anonymous history: %d, want 401", status)
	}
	if got := string(h.KV()["progress/2/42"]); got != `{"media_id":42,"offset":30,"updated":"2025-01-02T20:02:00Z","posts":2}` {
		t.Errorf("KV progress/2/42 = %s", got)
	}
}
