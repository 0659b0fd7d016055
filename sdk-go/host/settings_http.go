package host

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// SettingsPathPrefix and SettingsPathSuffix frame the route the Middleware
// serves for users' own plugin settings: GET reads and PATCH (or PUT)
// writes /api/v1/plugins/<name>/settings for the user WithUser
// authenticates. There is no user in the path: a user can only ever reach
// their own settings.
const (
	SettingsPathPrefix = "/api/v1/plugins/"
	SettingsPathSuffix = "/settings"
)

// maxSettingsBody bounds a settings write through the middleware.
const maxSettingsBody = 256 << 10

// settingsPlugin returns the plugin named by a settings path, if r is one.
func settingsPlugin(r *http.Request) (string, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, SettingsPathPrefix)
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, SettingsPathSuffix)
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return name, true
}

// SettingsRefusal is the JSON body of a refused settings write (422): the
// daemon's message, and each failing field on its own, for a form to show
// next to the field.
type SettingsRefusal struct {
	Error    string            `json:"error"`
	Problems []SettingsProblem `json:"problems"`
}

// SettingsProblem is one failing field: "max_rating", "server.port" or
// "hosts[0]" below it, "" for the settings as a whole.
type SettingsProblem struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// refusal reads a refused write's message: the daemon words it as one
// line saying what was not saved, then one "field: reason" line per
// failing field ("(settings)" for the object as a whole).
func refusal(err error) SettingsRefusal {
	msg := err.Error()
	r := SettingsRefusal{Error: msg, Problems: []SettingsProblem{}}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		field, reason, ok := strings.Cut(l, ": ")
		if !ok {
			continue
		}
		if field == "(settings)" {
			field = ""
		}
		r.Problems = append(r.Problems, SettingsProblem{Field: field, Reason: reason})
	}
	return r
}

// serveSettings answers a user's read or write of their own settings of a
// plugin. The answer is the PluginSettings as JSON; a refused write is 422
// with a SettingsRefusal naming each bad field.
func (m *Middleware) serveSettings(w http.ResponseWriter, r *http.Request, plugin string) {
	if m.opts.user == nil {
		http.Error(w, "plugin settings need the host to say who the user is (host.WithUser)", http.StatusNotImplemented)
		return
	}
	user, ok := m.opts.user(r)
	if !ok || user <= 0 {
		http.Error(w, "log in to see or change your plugin settings", http.StatusUnauthorized)
		return
	}
	var ps *PluginSettings
	var err error
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		ps, err = m.s.UserSettings(r.Context(), plugin, user)
	case http.MethodPatch, http.MethodPut:
		body, rerr := io.ReadAll(io.LimitReader(r.Body, maxSettingsBody+1))
		if rerr != nil || len(body) > maxSettingsBody {
			http.Error(w, "settings body too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		var values map[string]any
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if derr := dec.Decode(&values); derr != nil || values == nil {
			http.Error(w, "settings must be a JSON object", http.StatusBadRequest)
			return
		}
		ps, err = m.s.SetUserSettings(r.Context(), plugin, user, values)
	default:
		w.Header().Set("Allow", "GET, PATCH, PUT")
		http.Error(w, "use GET to read and PATCH to change your settings", http.StatusMethodNotAllowed)
		return
	}
	if err != nil {
		status := http.StatusBadGateway
		switch {
		case errors.Is(err, errdefs.ErrInvalid):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnprocessableEntity)
			_ = json.NewEncoder(w).Encode(refusal(err))
			return
		case errors.Is(err, errdefs.ErrNotFound):
			status = http.StatusNotFound
		case errors.Is(err, ErrDaemonAway), errors.Is(err, errdefs.ErrUnavailable):
			status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ps)
}
