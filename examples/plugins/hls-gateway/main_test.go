package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

const gid = "00000000-0000-4000-8000-000000000042"

func route(t *testing.T, h *plugintest.Harness, hook, gid, track, query string) *plugin.Response {
	t.Helper()
	params := []plugin.Param{{Name: "gid", Value: gid}}
	path := "/api/v1/stream/" + gid + "/hls/master.m3u8"
	if hook == "media" {
		params = append(params, plugin.Param{Name: "track", Value: track})
		path = "/api/v1/stream/" + gid + "/hls/" + track + "/index.m3u8"
	}
	resp, err := h.Route(hook, &plugin.Request{Method: "GET", Path: path, RawQuery: query, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestPlaylists(t *testing.T) {
	h := plugintest.Start(t, &gateway{})
	for _, tc := range []struct {
		name, hook, gid, track, query string
		want                          string // the whole playlist
	}{
		{
			name: "master with audio", hook: "master", gid: gid,
			query: "video=42-video:5000000&audio=42-audio&duration=42",
			want: `#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="42-audio",DEFAULT=YES,AUTOSELECT=YES,URI="/api/v1/stream/` + gid + `/hls/42-audio/index.m3u8?duration=42&target=5"
#EXT-X-STREAM-INF:BANDWIDTH=5000000,AUDIO="audio"
/api/v1/stream/` + gid + `/hls/42-video/index.m3u8?duration=42&target=5
`,
		},
		{
			name: "master, two video tracks, no audio, 10 s segments", hook: "master", gid: gid,
			query: "video=a:10000000&video=b:1000000&duration=7200.5&target=10",
			want: `#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=10000000
/api/v1/stream/` + gid + `/hls/a/index.m3u8?duration=7200.5&target=10
#EXT-X-STREAM-INF:BANDWIDTH=1000000
/api/v1/stream/` + gid + `/hls/b/index.m3u8?duration=7200.5&target=10
`,
		},
		{
			name: "media playlist, last segment shorter", hook: "media", gid: gid, track: "42-video",
			query: "duration=12",
			want: `#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:5
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="/api/v1/stream/42-video/data/init.mp4"
#EXTINF:5.000,
/api/v1/stream/42-video/data/0.m4s
#EXTINF:5.000,
/api/v1/stream/42-video/data/1.m4s
#EXTINF:2.000,
/api/v1/stream/42-video/data/2.m4s
#EXT-X-ENDLIST
`,
		},
		{
			name: "media playlist, exact multiple", hook: "media", gid: gid, track: "x",
			query: "duration=20&target=10",
			want: `#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:10
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="/api/v1/stream/x/data/init.mp4"
#EXTINF:10.000,
/api/v1/stream/x/data/0.m4s
#EXTINF:10.000,
/api/v1/stream/x/data/1.m4s
#EXT-X-ENDLIST
`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := route(t, h, tc.hook, tc.gid, tc.track, tc.query)
			if resp.Status != http.StatusOK || resp.Header.Get("Content-Type") != "application/vnd.apple.mpegurl" {
				t.Fatalf("status %d, headers %v: %s", resp.Status, resp.Header, resp.Body)
			}
			if string(resp.Body) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", resp.Body, tc.want)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	h := plugintest.Start(t, &gateway{})
	for _, tc := range []struct {
		name, hook, gid, track, query, why string
	}{
		{"gid not a UUID", "master", "42", "", "video=a:1&duration=5", "gid must be"},
		{"no duration", "master", gid, "", "video=a:1", "duration=<seconds> is required"},
		{"negative duration", "media", gid, "a", "duration=-3", "duration=<seconds> is required"},
		{"no video", "master", gid, "", "duration=5", "video=<track id>:<bandwidth"},
		{"no bandwidth", "master", gid, "", "video=a&duration=5", "want <track id>:<bandwidth"},
		{"bad bandwidth", "master", gid, "", "video=a:fast&duration=5", "want <track id>:<bandwidth"},
		{"track id with a quote", "master", gid, "", "video=a%22b:1&duration=5", "want <track id>:<bandwidth"},
		{"bad audio", "master", gid, "", "video=a:1&audio=..%2F&duration=5", "bad audio track"},
		{"bad target", "media", gid, "a", "duration=5&target=0", "target must be"},
		{"too many segments", "media", gid, "a", "duration=86400&target=1", "too many segments"},
		{"bad track in path", "media", gid, "a%2F", "duration=5", "bad track id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := route(t, h, tc.hook, tc.gid, tc.track, tc.query)
			if resp.Status != http.StatusBadRequest || !strings.Contains(string(resp.Body), tc.why) {
				t.Errorf("got %d %q, want 400 saying %q", resp.Status, resp.Body, tc.why)
			}
		})
	}
}
