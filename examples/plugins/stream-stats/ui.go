package main

// The plugin's pages in the host's web UI (manifest [[ui.pages]]):
//
//	GET /api/v1/plugins/stream-stats/page   "stats", in the sidebar: a table of the streams
//	GET /api/v1/plugins/stream-stats/card   "summary", a dashboard card: one line of totals
//
// Hosts show them in a sandboxed iframe, without the user's credentials:
// the route hook renders what the user sees on the server, and the page
// reloads itself every refresh_seconds, the user's own setting
// (settings/user.json). The inlined bridge (plugin.BridgeScript) applies
// the host's theme and lets a row open its media page in the host.

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// userSettings are each user's own settings (settings/user.json).
type userSettings struct {
	RefreshSeconds int `json:"refresh_seconds"`
}

// The bounds and default of refresh_seconds, as in settings/user.json.
const (
	minRefresh     = 1
	maxRefresh     = 60
	defaultRefresh = 5
)

// refreshFor returns how often user's pages reload, in seconds.
func (p *statsPlugin) refreshFor(ctx context.Context, user int64) int {
	if p.host.Settings == nil { // a daemon without settings
		return defaultRefresh
	}
	var s userSettings
	if err := p.host.Settings.User(ctx, user, &s); err != nil {
		p.host.Log.Warn("could not read the user's settings; refreshing at the default", "user", user, "err", err)
		return defaultRefresh
	}
	if s.RefreshSeconds == 0 {
		return defaultRefresh
	}
	return min(max(s.RefreshSeconds, minRefresh), maxRefresh)
}

// uiHead is the head both pages share: the reload (by script: browsers
// ignore <meta http-equiv="refresh"> in some sandboxed frames), the
// bridge, and the styles: the host's theme through the bridge's CSS
// properties, with fallbacks for a page opened on its own. Until the
// host's context arrives the page is transparent and its content hidden,
// so a reload does not flash the fallback colours.
const uiHead = `{{define "head"}}<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="dim-refresh" content="{{.Refresh}}">
<script>{{.Bridge}}</script>
<script>
"use strict";
setTimeout(function () { location.reload(); }, 1000 * Number(document.querySelector('meta[name="dim-refresh"]').getAttribute("content")));
setTimeout(function () { // no host (the page opened on its own): show it in the fallback colours
  if (!document.documentElement.hasAttribute("data-theme")) { document.documentElement.setAttribute("data-theme", "light"); }
}, 500);
</script>
<style>
html:not([data-theme]) body { visibility: hidden; }
html, body { margin: 0; background: var(--dim-bg, transparent); color: var(--dim-text, #1c1f26); font-family: var(--dim-font, system-ui, sans-serif); font-size: 14px; }
body { padding: 12px 16px; }
.muted { opacity: .7; margin: 0 0 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: var(--dim-surface, #f4f5f8); }
th, td { padding: 6px 8px; text-align: left; border-bottom: 1px solid color-mix(in srgb, var(--dim-text, #1c1f26) 15%, transparent); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
button { font: inherit; color: var(--dim-bg, #fff); background: var(--dim-accent, #c46a00); border: 0; border-radius: 4px; padding: 3px 10px; cursor: pointer; }
.card { margin: 0; font-size: 16px; }
.card strong { color: var(--dim-accent, #c46a00); }
</style>{{end}}`

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"mb":    func(n int64) string { return fmt.Sprintf("%.1f", float64(n)/1e6) },
	"kbps":  func(n int64) string { return fmt.Sprintf("%d", (n+500)/1000) },
	"secs":  func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"clock": func(t time.Time) string { return t.UTC().Format("15:04:05") },
}).Parse(uiHead + `<!doctype html>
<html lang="en"><head>{{template "head" .}}
<title>Stream statistics</title></head>
<body>
<p class="muted">{{len .Streams}} stream{{if ne (len .Streams) 1}}s{{end}}, newest first. Reloads every {{.Refresh}} s.</p>
{{if .Streams}}<div class="scroll"><table>
<thead><tr><th class="num">#</th><th>Kind</th><th>Track</th><th>Codec</th><th class="num">Segments</th><th class="num">Frames</th><th class="num">MB</th><th class="num">Bitrate (kbit/s)</th><th class="num">Peak (kbit/s)</th><th class="num">Key frames</th><th class="num">Missed</th><th class="num">Media time (s)</th><th>Last seen (UTC)</th><th>State</th><th>Media</th></tr></thead>
<tbody>
{{range .Streams}}<tr>
<td class="num">{{.ID}}</td><td>{{.Kind}}</td><td>{{.Track}}</td><td>{{.Codec}}</td>
<td class="num">{{.Segments}}</td><td class="num">{{.Frames}}</td><td class="num">{{mb .Bytes}}</td>
<td class="num">{{kbps .Bitrate}}</td><td class="num">{{kbps .PeakBitrate}}</td><td class="num">{{.KeyFrames}}</td><td class="num">{{.Missed}}</td>
<td class="num">{{secs .DurationSeconds}}</td><td>{{clock .LastSeen}}</td><td>{{if .EndedHow}}{{.EndedHow}}{{else}}running{{end}}</td>
<td>{{if gt .MediaID 0}}<button type="button" data-media="{{.MediaID}}">Media {{.MediaID}}</button>{{end}}</td>
</tr>
{{end}}</tbody>
</table></div>{{else}}<p>No streams yet.</p>{{end}}
<script>
"use strict";
document.querySelectorAll("button[data-media]").forEach(function (b) {
  b.addEventListener("click", function () { dim.navigate("/media/" + b.getAttribute("data-media")); });
});
</script>
</body></html>
`))

var cardTmpl = template.Must(template.New("card").Parse(uiHead + `<!doctype html>
<html lang="en"><head>{{template "head" .}}
<title>Streams</title></head>
<body><p class="card"><strong>{{.Count}}</strong> stream{{if ne .Count 1}}s{{end}}, <strong>{{.Frames}}</strong> frame{{if ne .Frames 1}}s{{end}}, <strong>{{.MB}}</strong> MB</p></body></html>
`))

// serveUI renders the page (hook "page") or the card (hook "card") for
// the requesting user.
func (p *statsPlugin) serveUI(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	all, err := p.stored(ctx)
	if err != nil {
		return nil, err
	}
	data := map[string]any{"Bridge": template.JS(plugin.BridgeScript), "Refresh": p.refreshFor(ctx, req.UserID)}
	t := pageTmpl
	if hook == "card" {
		t = cardTmpl
		var frames int
		var total int64
		for _, s := range all {
			frames += s.Frames
			total += s.Bytes
		}
		data["Count"], data["Frames"], data["MB"] = len(all), frames, fmt.Sprintf("%.1f", float64(total)/1e6)
	} else {
		streams := make([]Stats, len(all))
		for i, s := range all {
			streams[i] = s.Stats
		}
		data["Streams"] = streams
	}
	return htmlPage(http.StatusOK, t, data)
}

// unauthorizedPage answers a page request without a logged-in user.
var unauthorizedPage = template.Must(template.New("401").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stream statistics</title></head>
<body><p>Log in to see stream statistics.</p></body></html>
`))

func htmlPage(status int, t *template.Template, data any) (*plugin.Response, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("render %s: %w", t.Name(), err)
	}
	return &plugin.Response{Status: status, Header: http.Header{
		"Content-Type":  {"text/html; charset=utf-8"},
		"Cache-Control": {"no-store"},
	}, Body: b.Bytes()}, nil
}
