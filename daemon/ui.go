package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// UIDocument is what the enabled, running plugins add to a host's web UI
// (see wire.UIDocument): a Preferences tab for each plugin with user
// settings, and the pages each serves in their slots. It is built anew for
// every call, so it follows plugins as they come and go.
func (d *Daemon) UIDocument() wire.UIDocument {
	doc := wire.UIDocument{Format: wire.UIFormat, Slots: manifest.Slots, Plugins: []wire.UIPlugin{}}
	for _, u := range d.sortedUnits() {
		u.mu.Lock()
		rec, st := u.rec, u.state
		u.mu.Unlock()
		if _, running := st.(runningState); !running || !rec.Enabled {
			continue
		}
		m := rec.Manifest
		if m.Settings.User == nil && m.UI.IsZero() {
			continue
		}
		p := wire.UIPlugin{Name: rec.Name, Version: m.Version, Description: m.Description}
		if m.Settings.User != nil {
			p.Preferences = &wire.UIPreferences{URL: manifest.PagePrefix + rec.Name + "/settings"}
		}
		for _, pg := range m.UI.Pages {
			p.Pages = append(p.Pages, wire.UIPage{ID: pg.ID, Title: pg.Title, Slot: pg.Slot, URL: pg.Route, Sandbox: wire.PageSandbox})
		}
		doc.Plugins = append(doc.Plugins, p)
	}
	h := fnv.New64a()
	if err := json.NewEncoder(h).Encode(doc); err == nil {
		doc.Version = fmt.Sprintf("%016x", h.Sum64())
	}
	return doc
}

func (h *hostSession) UiDocument(ctx context.Context, call schema.HostSession_uiDocument) error {
	b, err := json.Marshal(h.d.UIDocument())
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetDocument(b)
}
