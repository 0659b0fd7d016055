package wire

// UIDocument is what plugins add to a host's web UI, as the daemon serves
// it (HostSession.uiDocument) and the Go host middleware at GET
// /api/v1/plugins/ui. Only enabled, running plugins appear; Version changes
// whenever anything in it does, so a host may cache it by Version.
type UIDocument struct {
	// Format is the document's layout version: UIFormat.
	Format int `json:"format"`
	// Version identifies this content (a hash); compare for equality only.
	Version string `json:"version"`
	// Slots are the slots pages may fill, in the order hosts document
	// them; a host shows nothing for a slot it does not know.
	Slots []string `json:"slots"`
	// Plugins contribute, in name order.
	Plugins []UIPlugin `json:"plugins"`
}

// UIFormat is the layout version of UIDocument this code writes.
const UIFormat = 1

// UIPlugin is one plugin's contributions.
type UIPlugin struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
	// Preferences, when set, asks for a Preferences tab rendered from the
	// plugin's user settings schema: GET Preferences.URL returns the
	// schema, its UI schema and the user's values; PATCH writes them.
	Preferences *UIPreferences `json:"preferences,omitempty"`
	// Pages are pages the plugin serves, for the host to show in a
	// sandboxed iframe in their slot.
	Pages []UIPage `json:"pages,omitempty"`
}

// UIPreferences is where a plugin's Preferences tab reads and writes.
type UIPreferences struct {
	URL string `json:"url"`
}

// UIPage is one page of a plugin.
type UIPage struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	Slot  string `json:"slot"`
	// URL is the page's path on the host (the plugin serves it through a
	// route hook). Hosts add ?media_id=<id> for media-action and
	// player-overlay pages.
	URL string `json:"url"`
	// Sandbox is the iframe's sandbox attribute: never
	// allow-same-origin, so the page cannot read the host page's cookies,
	// storage or DOM.
	Sandbox string `json:"sandbox"`
}

// PageSandbox is the sandbox every plugin page gets, as an iframe
// attribute and (PageCSP) on the page's own response, so that it stays
// sandboxed even when opened directly.
const (
	PageSandbox = "allow-scripts allow-forms"
	PageCSP     = "sandbox " + PageSandbox + "; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)
