package manifest

import (
	"fmt"
	"strings"
	"unicode"
)

// The slots of a host's web UI a page can fill. A host that does not know a
// slot shows nothing for it.
const (
	// SlotNav: a page of its own, linked from the sidebar
	// (/plugins/<name>/<id> in the host UI).
	SlotNav = "nav"
	// SlotMediaAction: an action on a media page, opened with the media
	// item's id.
	SlotMediaAction = "media-action"
	// SlotPlayerOverlay: a layer over the player, with the media item's id.
	SlotPlayerOverlay = "player-overlay"
	// SlotDashboardCard: a card on the dashboard.
	SlotDashboardCard = "dashboard-card"
)

// Slots lists every slot, in the order hosts document them.
var Slots = []string{SlotNav, SlotMediaAction, SlotPlayerOverlay, SlotDashboardCard}

// MaxPageTitleLen bounds a page title.
const MaxPageTitleLen = 80

// UI declares what the plugin adds to a host's web UI. A Preferences tab
// needs no declaration: hosts render one from [settings.user] (and the
// operator console from [settings.global]).
type UI struct {
	// Pages are pages the plugin serves itself, each through one of its
	// own GET route hooks, which hosts show in a sandboxed iframe.
	Pages []Page `json:"pages,omitempty" toml:"pages,omitempty"`
}

// IsZero reports whether the manifest declares no UI.
func (u UI) IsZero() bool { return len(u.Pages) == 0 }

// Page is one page of a plugin's UI.
type Page struct {
	// ID names the page within the plugin: ^[a-z][a-z0-9-]{0,39}$.
	ID string `json:"id" toml:"id"`
	// Title is shown in the host's UI: 1 to 80 characters, no control
	// characters.
	Title string `json:"title" toml:"title"`
	// Slot is where the host shows it: nav, media-action, player-overlay
	// or dashboard-card.
	Slot string `json:"slot" toml:"slot"`
	// Route is the page's path, under /api/v1/plugins/<name>/, matched by
	// one of the plugin's own GET route hooks. Hosts add ?media_id=<id>
	// for media-action and player-overlay pages.
	Route string `json:"route" toml:"route"`
}

// PagePrefix is where a plugin's pages live: PagePrefix + name + "/".
const PagePrefix = "/api/v1/plugins/"

type rawUI struct {
	Pages []rawPage `toml:"pages"`
}

type rawPage struct {
	ID    any `toml:"id"`
	Title any `toml:"title"`
	Slot  any `toml:"slot"`
	Route any `toml:"route"`
}

func (d *decoder) ui(r *rawUI, name string, hooks []Hook) UI {
	var u UI
	if r == nil {
		return u
	}
	ids := map[string]int{}
	for i := range r.Pages {
		path := fmt.Sprintf("ui.pages[%d]", i)
		p := d.page(path, &r.Pages[i], name, hooks)
		d.unique(path+".id", p.ID, ids, "ui.pages", i)
		u.Pages = append(u.Pages, p)
	}
	return u
}

func (d *decoder) page(path string, r *rawPage, name string, hooks []Hook) Page {
	var p Page
	if p.ID = d.required(path+".id", r.ID); p.ID != "" && !namePattern.MatchString(p.ID) {
		d.addf(path+".id", "%q is not a valid page id (want 1 to 40 lowercase letters, digits or dashes, starting with a letter)", p.ID)
	}
	if p.Title = d.required(path+".title", r.Title); p.Title != "" {
		switch {
		case len([]rune(p.Title)) > MaxPageTitleLen:
			d.addf(path+".title", "is %d characters; at most %d", len([]rune(p.Title)), MaxPageTitleLen)
		case strings.IndexFunc(p.Title, unicode.IsControl) >= 0:
			d.addf(path+".title", "contains control characters")
		}
	}
	if p.Slot = d.required(path+".slot", r.Slot); p.Slot != "" && !knownSlot(p.Slot) {
		d.addf(path+".slot", "%q is not a slot (want one of %s)", p.Slot, strings.Join(Slots, ", "))
	}
	if p.Route = d.required(path+".route", r.Route); p.Route != "" && name != "" {
		if msg := pageRouteProblem(p.Route, name, hooks); msg != "" {
			d.addf(path+".route", "%s", msg)
		}
	}
	return p
}

func knownSlot(s string) bool {
	for _, k := range Slots {
		if s == k {
			return true
		}
	}
	return false
}

// pageRouteProblem says why route cannot be a page of plugin name, or "".
func pageRouteProblem(route, name string, hooks []Hook) string {
	prefix := PagePrefix + name + "/"
	if !strings.HasPrefix(route, prefix) {
		return fmt.Sprintf("%q is not under %s: a plugin's pages live under its own path", route, prefix)
	}
	if strings.ContainsAny(route, "?#:*") || strings.Contains(route, "//") || strings.Contains(route, "/../") || strings.HasSuffix(route, "/..") {
		return fmt.Sprintf("%q must be a plain path (no query, fragment, parameters, \"..\" or empty segments)", route)
	}
	for _, h := range hooks {
		if h.Phase != PhaseRoute || (h.Method != "GET" && h.Method != "*") {
			continue
		}
		if r, msg := parseRoute(h.Route); msg == "" {
			if _, ok := r.Match(route); ok {
				return ""
			}
		}
	}
	return fmt.Sprintf("%q is served by none of this plugin's GET route hooks: add a route hook (phase = \"route\") that answers it", route)
}
