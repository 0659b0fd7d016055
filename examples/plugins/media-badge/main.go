// Command media-badge is an example dimplugd plugin. On every
// GET /api/v1/media/:id response it adds an X-Dim-Badge header and, when the
// body is a JSON object, a "plugin_badge" field and a "views" counter kept in
// the plugin's key-value store (so the count survives restarts).
//
// It also adds a "Views" action to the host's media pages (manifest
// [[ui.pages]], slot media-action): GET
// /api/v1/plugins/media-badge/views?media_id=<id> renders the count for
// the host's sandboxed iframe (views.go).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type badge struct{ host *plugin.Host }

func (b *badge) Init(ctx context.Context, h *plugin.Host) error {
	b.host = h
	h.Log.Info("media-badge ready", "sandboxed", h.Sandboxed)
	return nil
}

func (b *badge) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	if resp.Status != 200 {
		return nil
	}
	id := req.Param("id")
	views, err := b.countView(ctx, id)
	if err != nil {
		return err
	}
	resp.Header.Set("X-Dim-Badge", "plugin-approved")
	var body map[string]any
	if json.Unmarshal(resp.Body, &body) != nil {
		return nil // not a JSON object: leave the body alone
	}
	body["plugin_badge"] = "plugin-approved"
	body["views"] = views
	out, err := json.Marshal(body)
	if err != nil {
		return err
	}
	resp.Body = out
	return nil
}

// countView increments and returns the view count of a media item. The
// count is one atomic KV increment, so concurrent views of the same item
// are all counted (a Get then a Set would lose some).
func (b *badge) countView(ctx context.Context, id string) (int, error) {
	n, err := b.host.KV.Increment(ctx, "views/"+id, 1)
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// ServeRoute answers the plugin's own routes: the views page.
func (b *badge) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	if hook == "views" {
		return b.views(ctx, req)
	}
	return &plugin.Response{Status: http.StatusNotFound, Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, Body: []byte("no such route\n")}, nil
}

func main() {
	if err := plugin.Serve(&badge{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "media-badge:", err)
		os.Exit(1)
	}
}
