// Command dashboard-rows is an example dimplugd plugin that adds a
// "Trending" row to Dim's dashboard: the media opened most often.
//
// An observe hook counts every media page Dim serves successfully
// (GET /api/v1/media/:id) and remembers the card to show for it (id, name,
// poster). A response hook on GET /api/v1/dashboard then adds the row. Dim's
// web UI renders whatever rows the dashboard returns, so no UI change is
// needed. Counts and cards live in the plugin's key-value store
// ("media/<id>"), so the row survives restarts.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// RowTitle is the title of the row the plugin adds; rowSize its length.
const (
	RowTitle = "Trending"
	rowSize  = 5
)

// entry is what the plugin keeps per media item.
type entry struct {
	ID         json.Number `json:"id"`
	Name       string      `json:"name"`
	PosterPath *string     `json:"poster_path"`
	Views      int         `json:"views"`
}

// card is a dashboard card, in Dim's shape.
type card struct {
	ID         json.Number `json:"id"`
	Name       string      `json:"name"`
	PosterPath *string     `json:"poster_path"`
}

type rows struct {
	host *plugin.Host

	mu    sync.Mutex
	media map[string]*entry // by media id
}

func (r *rows) Init(ctx context.Context, h *plugin.Host) error {
	r.host = h
	r.media = map[string]*entry{}
	keys, err := h.KV.List(ctx, "media/", 0)
	if err != nil {
		return err
	}
	for _, k := range keys {
		v, ok, err := h.KV.Get(ctx, k)
		if err != nil {
			return err
		}
		var e entry
		if !ok || json.Unmarshal(v, &e) != nil {
			h.Log.Warn("skipping unreadable entry", "key", k)
			continue
		}
		r.media[strings.TrimPrefix(k, "media/")] = &e
	}
	h.Log.Info("dashboard-rows ready", "media", len(r.media))
	return nil
}

// Observe counts a successful media page view.
func (r *rows) Observe(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) {
	if resp.Status != http.StatusOK {
		return
	}
	var page card
	dec := json.NewDecoder(bytes.NewReader(resp.Body))
	dec.UseNumber()
	if dec.Decode(&page) != nil || page.ID.String() == "" || page.Name == "" {
		return
	}
	id := page.ID.String()
	// Observers run concurrently: hold the lock across the write so that
	// the store never goes back to an older count.
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.media[id]
	if e == nil {
		e = &entry{}
		r.media[id] = e
	}
	e.ID, e.Name, e.PosterPath = page.ID, page.Name, page.PosterPath
	e.Views++
	b, _ := json.Marshal(e)
	if err := r.host.KV.Set(ctx, "media/"+id, b); err != nil {
		r.host.Log.Warn("could not store view", "media", id, "err", err)
	}
}

// trending returns the most viewed media, most views first, then by id.
func (r *rows) trending() []card {
	r.mu.Lock()
	es := make([]entry, 0, len(r.media))
	for _, e := range r.media {
		es = append(es, *e)
	}
	r.mu.Unlock()
	sort.Slice(es, func(i, j int) bool {
		if es[i].Views != es[j].Views {
			return es[i].Views > es[j].Views
		}
		a, _ := strconv.ParseInt(es[i].ID.String(), 10, 64)
		b, _ := strconv.ParseInt(es[j].ID.String(), 10, 64)
		return a < b
	})
	cards := []card{}
	for _, e := range es[:min(len(es), rowSize)] {
		cards = append(cards, card{ID: e.ID, Name: e.Name, PosterPath: e.PosterPath})
	}
	return cards
}

// HookResponse adds the Trending row to the dashboard.
func (r *rows) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	if resp.Status != http.StatusOK {
		return nil
	}
	var dash map[string]json.RawMessage
	if json.Unmarshal(resp.Body, &dash) != nil {
		return nil // not Dim's map of rows: leave it alone
	}
	cards := r.trending()
	if len(cards) == 0 {
		return nil
	}
	row, err := json.Marshal(cards)
	if err != nil {
		return err
	}
	dash[RowTitle] = row
	body, err := json.Marshal(dash)
	if err != nil {
		return err
	}
	resp.Body = body
	return nil
}

func main() {
	if err := plugin.Serve(&rows{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "dashboard-rows:", err)
		os.Exit(1)
	}
}
