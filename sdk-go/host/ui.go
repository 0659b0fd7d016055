package host

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// UIDocument is what plugins add to a host's web UI (see wire.UIDocument
// and docs/protocol.md "Plugin UI").
type UIDocument = wire.UIDocument

// UIPath is where the Middleware serves the UI document.
const UIPath = "/api/v1/plugins/ui"

// UIDocument fetches what the enabled, running plugins add to the host's
// web UI. Fetch it again when the route table changes (plugins came or
// went); its Version says whether anything changed.
func (s *Session) UIDocument(ctx context.Context) (*UIDocument, error) {
	l := s.link.Load()
	if l == nil {
		return nil, fmt.Errorf("plugin UI: %w", ErrDaemonAway)
	}
	fut, release := l.s.UiDocument(ctx, func(schema.HostSession_uiDocument_Params) error { return nil })
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	b, err := res.Document()
	if err != nil {
		return nil, err
	}
	var doc UIDocument
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("plugin UI document from the daemon: %w", err)
	}
	return &doc, nil
}

// serveUI answers GET UIPath with the UI document.
func (m *Middleware) serveUI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		http.Error(w, "the plugin UI document is read-only", http.StatusMethodNotAllowed)
		return
	}
	doc, err := m.s.UIDocument(r.Context())
	if err != nil {
		// No plugin UI while the daemon is away: an empty document, so
		// the host's own UI works.
		doc = &UIDocument{Format: wire.UIFormat, Version: "unavailable", Slots: []string{}, Plugins: []wire.UIPlugin{}}
		w.Header().Set("Warning", `199 - "dimplugd is not reachable: no plugin UI"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", `"`+doc.Version+`"`)
	_ = json.NewEncoder(w).Encode(doc)
}

// pluginPath reports whether path is under a plugin's own namespace
// (/api/v1/plugins/<name>/...), where everything a route hook answers is
// the plugin's content and gets wire.PageCSP.
func pluginPath(path string) bool {
	rest, ok := strings.CutPrefix(path, SettingsPathPrefix)
	return ok && strings.Contains(rest, "/")
}
