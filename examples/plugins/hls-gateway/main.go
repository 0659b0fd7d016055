// Command hls-gateway is an example dimplugd plugin that serves HLS
// playlists next to Dim's MPEG-DASH manifest, for players that speak HLS
// only (Safari on iOS, many TVs). It owns two routes:
//
//	GET /api/v1/stream/:gid/hls/master.m3u8?video=<track>:<bandwidth>[&video=...][&audio=<track>]&duration=<s>[&target=<s>]
//	GET /api/v1/stream/:gid/hls/:track/index.m3u8?duration=<s>[&target=<s>]
//
// and points every segment at Dim's existing segment URLs
// (/api/v1/stream/<track>/data/init.mp4 and .../<n>.m4s): the fMP4 segments
// Dim cuts for DASH are valid HLS segments (HLS version 7), so Dim does the
// streaming and the plugin only describes it.
//
// A route-phase plugin cannot ask Dim about a session, so the playlists are
// derived from the request alone: the track ids, bandwidths and duration come
// from Dim's virtual manifest (GET /api/v1/stream/:id/manifest), which the
// client already holds, and segments follow Dim's convention of fixed-length
// segments (target seconds, default 5) numbered from 0. See README.md for
// what that cannot know.
package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

const (
	defaultTarget = 5     // seconds: Dim's segment length
	maxDuration   = 86400 // seconds
	maxSegments   = 20000
)

var (
	gidPattern   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	trackPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// gateway keeps no state: everything comes from the request.
type gateway struct{}

// badRequest is an error the client made; it becomes a 400.
type badRequest string

func (g *gateway) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	gid := req.Param("gid")
	if !gidPattern.MatchString(gid) {
		return answer(http.StatusBadRequest, "text/plain", "gid must be the session id (a UUID) from Dim's virtual manifest\n"), nil
	}
	q := req.Query()
	var body string
	var bad badRequest
	switch hook {
	case "master":
		body, bad = master(gid, q)
	case "media":
		body, bad = mediaPlaylist(req.Param("track"), q)
	default:
		return nil, fmt.Errorf("unknown hook %q", hook)
	}
	if bad != "" {
		return answer(http.StatusBadRequest, "text/plain", string(bad)+"\n"), nil
	}
	return answer(http.StatusOK, "application/vnd.apple.mpegurl", body), nil
}

// timing reads duration and target from the query.
func timing(q url.Values) (duration, target float64, bad badRequest) {
	duration, err := strconv.ParseFloat(q.Get("duration"), 64)
	if err != nil || !(duration > 0 && duration <= maxDuration) {
		return 0, 0, "duration=<seconds> is required: the media's duration from Dim's virtual manifest"
	}
	target = defaultTarget
	if s := q.Get("target"); s != "" {
		t, err := strconv.Atoi(s)
		if err != nil || t < 1 || t > 60 {
			return 0, 0, "target must be the segment length in whole seconds (1-60)"
		}
		target = float64(t)
	}
	if math.Ceil(duration/target) > maxSegments {
		return 0, 0, "too many segments"
	}
	return duration, target, ""
}

// master builds the multivariant playlist: one variant per video track,
// with the audio track as an alternative rendition.
func master(gid string, q url.Values) (string, badRequest) {
	duration, target, bad := timing(q)
	if bad != "" {
		return "", bad
	}
	if len(q["video"]) == 0 {
		return "", "video=<track id>:<bandwidth in bits/s> is required, once per video track of the virtual manifest"
	}
	audio := q.Get("audio")
	if audio != "" && !trackPattern.MatchString(audio) {
		return "", badRequest(fmt.Sprintf("bad audio track id %q", audio))
	}
	timingQuery := url.Values{"duration": {strconv.FormatFloat(duration, 'f', -1, 64)}, "target": {strconv.Itoa(int(target))}}.Encode()
	uri := func(track string) string {
		return fmt.Sprintf("/api/v1/stream/%s/hls/%s/index.m3u8?%s", gid, track, timingQuery)
	}
	var b strings.Builder
	b.WriteString("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n")
	if audio != "" {
		fmt.Fprintf(&b, "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"%s\",DEFAULT=YES,AUTOSELECT=YES,URI=\"%s\"\n", audio, uri(audio))
	}
	for _, v := range q["video"] {
		track, bw, ok := strings.Cut(v, ":")
		n, err := strconv.ParseUint(bw, 10, 64)
		if !ok || err != nil || n == 0 || !trackPattern.MatchString(track) {
			return "", badRequest(fmt.Sprintf("video=%q: want <track id>:<bandwidth in bits/s>", v))
		}
		fmt.Fprintf(&b, "#EXT-X-STREAM-INF:BANDWIDTH=%d", n)
		if audio != "" {
			b.WriteString(",AUDIO=\"audio\"")
		}
		fmt.Fprintf(&b, "\n%s\n", uri(track))
	}
	return b.String(), ""
}

// mediaPlaylist lists one track's segments at Dim's segment URLs.
func mediaPlaylist(track string, q url.Values) (string, badRequest) {
	if !trackPattern.MatchString(track) {
		return "", badRequest(fmt.Sprintf("bad track id %q", track))
	}
	duration, target, bad := timing(q)
	if bad != "" {
		return "", bad
	}
	base := "/api/v1/stream/" + track + "/data/"
	var b strings.Builder
	fmt.Fprintf(&b, "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:%d\n#EXT-X-MEDIA-SEQUENCE:0\n", int(target))
	fmt.Fprintf(&b, "#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"%sinit.mp4\"\n", base)
	for n := 0; float64(n)*target < duration; n++ {
		fmt.Fprintf(&b, "#EXTINF:%.3f,\n%s%d.m4s\n", min(target, duration-float64(n)*target), base, n)
	}
	b.WriteString("#EXT-X-ENDLIST\n")
	return b.String(), ""
}

func answer(status int, contentType, body string) *plugin.Response {
	return &plugin.Response{Status: status, Header: http.Header{"Content-Type": {contentType}}, Body: []byte(body)}
}

func main() {
	if err := plugin.Serve(&gateway{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "hls-gateway:", err)
		os.Exit(1)
	}
}
