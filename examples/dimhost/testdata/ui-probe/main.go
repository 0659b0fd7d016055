// Command ui-probe is a test plugin (see plugin.toml): its probe page tries
// to reach what a sandboxed plugin page must not and reports, through the
// bridge's notify message, what it got; its overlay page reports the media
// id it was given, by query and by the bridge's context.
package main

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type probe struct{}

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>probe</title>
<style>body{font-family:var(--dim-font,sans-serif);background:var(--dim-bg,#fff);color:var(--dim-text,#000)}
button{font-size:20px;padding:20px 40px}</style>
<script>{{.Bridge}}</script></head>
<body><button id="go" type="button">navigate</button>
<p id="server">{{.Server}}</p>
<script>
"use strict";
var kind = {{.Kind}}, server = {{.Server}};
function blocked(f) { try { return "read:" + String(f()); } catch (e) { return "blocked:" + e.name; } }
dim.onContext(function (c) {
  dim.notify("context " + kind + " theme=" + c.theme.mode + " media=" + c.media_id + " query=" + new URLSearchParams(location.search).get("media_id") + " data-theme=" + document.documentElement.getAttribute("data-theme"));
});
if (kind === "probe") {
  var r = {
    cookie: blocked(function () { return document.cookie; }),
    parentDOM: blocked(function () { return window.parent.document.body.innerHTML.length; }),
    topCookie: blocked(function () { return window.top.document.cookie; }),
    storage: blocked(function () { return window.localStorage.getItem("theme"); }),
    opener: blocked(function () { return window.parent.location.href; })
  };
  fetch("/api/v1/auth/whoami", {credentials: "include"})
    .then(function (resp) { return resp.text().then(function (t) { return "read:" + resp.status + " " + t; }); },
          function (e) { return "blocked:" + e.name; })
    .then(function (f) { r.fetch = f; dim.notify("probe " + server + " " + JSON.stringify(r)); });
  document.getElementById("go").addEventListener("click", function () {
    dim.navigate("https://example.invalid/");
    dim.navigate("javascript:alert(1)");
    dim.navigate("//example.invalid/media/1");
    dim.navigate("/media/42");
  });
}
</script></body></html>`))

func (probe) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	kind := strings.TrimPrefix(req.Path, "/api/v1/plugins/ui-probe/")
	if kind != "probe" && kind != "overlay" {
		return &plugin.Response{Status: http.StatusNotFound, Body: []byte("no such page")}, nil
	}
	// What the route hook itself got of the user: an id, never credentials.
	server := fmt.Sprintf("user=%d auth=%q cookie=%q", req.UserID, req.Header.Get("Authorization"), req.Header.Get("Cookie"))
	var b strings.Builder
	if err := page.Execute(&b, map[string]any{"Bridge": template.JS(plugin.BridgeScript), "Kind": kind, "Server": server}); err != nil {
		return nil, err
	}
	return &plugin.Response{Status: http.StatusOK, Header: http.Header{"Content-Type": {"text/html; charset=utf-8"}}, Body: []byte(b.String())}, nil
}

func main() {
	if err := plugin.Serve(probe{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "ui-probe:", err)
		os.Exit(1)
	}
}
