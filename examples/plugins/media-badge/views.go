package main

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"regexp"
	"strconv"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// mediaIDPattern is a positive decimal integer, without sign or leading
// zeros, that fits in an int64 (ParseInt checks the range).
var mediaIDPattern = regexp.MustCompile(`^[1-9][0-9]{0,18}$`)

var viewsPage = template.Must(template.New("views").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Views</title>
<script>{{.Bridge}}</script>
<script>
"use strict";
setTimeout(function () { // no host (the page opened on its own): show it in the fallback colours
  if (!document.documentElement.hasAttribute("data-theme")) { document.documentElement.setAttribute("data-theme", "light"); }
}, 500);
</script>
<style>
html:not([data-theme]) body { visibility: hidden; }
html, body { margin: 0; background: var(--dim-bg, transparent); color: var(--dim-text, #1c1f26); font-family: var(--dim-font, system-ui, sans-serif); font-size: 14px; }
body { padding: 12px 16px; }
.count { font-size: 28px; font-weight: 700; color: var(--dim-accent, #c46a00); }
button { font: inherit; color: var(--dim-bg, #fff); background: var(--dim-accent, #c46a00); border: 0; border-radius: 4px; padding: 4px 12px; cursor: pointer; }
</style></head>
<body>
{{if .Error}}<p>{{.Error}}</p>{{else}}<p><span class="count">{{.Views}}</span> view{{if ne .Views 1}}s{{end}} of this media page</p>
<button type="button" id="tell">Tell me</button>
<script>
"use strict";
document.getElementById("tell").addEventListener("click", function () { dim.notify({{.Message}}); });
</script>{{end}}
</body></html>
`))

// views renders the "views" page (manifest [[ui.pages]], slot
// media-action): how many times the media item given by ?media_id= was
// viewed, as counted by the badge hook. It does not count a view itself.
func (b *badge) views(ctx context.Context, req *plugin.Request) (*plugin.Response, error) {
	data := map[string]any{"Bridge": template.JS(plugin.BridgeScript)}
	raw := req.Query().Get("media_id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if !mediaIDPattern.MatchString(raw) || err != nil {
		data["Error"] = "media_id must be a positive integer"
		return render(http.StatusBadRequest, data)
	}
	v, _, err := b.host.KV.Get(ctx, "views/"+strconv.FormatInt(id, 10))
	if err != nil {
		return nil, err
	}
	n, _ := strconv.Atoi(string(v))
	data["Views"] = n
	times := "times"
	if n == 1 {
		times = "time"
	}
	data["Message"] = fmt.Sprintf("Media %d was viewed %d %s.", id, n, times)
	return render(http.StatusOK, data)
}

func render(status int, data any) (*plugin.Response, error) {
	var buf bytes.Buffer
	if err := viewsPage.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render the views page: %w", err)
	}
	return &plugin.Response{Status: status, Header: http.Header{
		"Content-Type":  {"text/html; charset=utf-8"},
		"Cache-Control": {"no-store"},
	}, Body: buf.Bytes()}, nil
}
