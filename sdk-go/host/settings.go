package host

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Settings scopes (manifest [settings.global] and [settings.user]).
const (
	ScopeGlobal = "global"
	ScopeUser   = "user"
)

// PluginSettings is one scope of a plugin's settings as an operator or a
// host sees them: secrets are masked ("********").
type PluginSettings struct {
	Scope string `json:"scope"`
	User  int64  `json:"user,omitempty"`
	// Values are the defaults overlaid with what is stored.
	Values map[string]any `json:"values"`
	// Stored is only what was set.
	Stored map[string]any `json:"stored"`
	// Schema is the scope's JSON Schema; UI its JSON Forms UI schema, if
	// the plugin ships one.
	Schema json.RawMessage `json:"schema"`
	UI     json.RawMessage `json:"ui,omitempty"`
	// Problem says why the stored values fail the current schema (after an
	// upgrade changed it), or is empty.
	Problem string `json:"problem,omitempty"`
}

// Settings reads one scope of a plugin's settings: scope ScopeGlobal with
// user 0, or ScopeUser with the user's id.
func (c *Control) Settings(ctx context.Context, name, scope string, user int64) (*PluginSettings, error) {
	fut, release := c.c.GetSettings(ctx, func(p schema.Control_getSettings_Params) error {
		p.SetUser(user)
		if err := p.SetScope(scope); err != nil {
			return err
		}
		return p.SetName(name)
	})
	defer release()
	return settingsOf(fut.Struct())
}

// SetSettings writes settings (see schema/control.capnp setSettings): a
// partial update unless replace, where a nil value resets a key to its
// default and a secret sent back masked keeps its value. An invalid write
// fails as invalid (errdefs.ErrInvalid) listing every failing field.
func (c *Control) SetSettings(ctx context.Context, name, scope string, user int64, values map[string]any, replace bool) (*PluginSettings, error) {
	doc, err := json.Marshal(values)
	if err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	fut, release := c.c.SetSettings(ctx, func(p schema.Control_setSettings_Params) error {
		p.SetUser(user)
		p.SetReplace(replace)
		if err := p.SetValues(doc); err != nil {
			return err
		}
		if err := p.SetScope(scope); err != nil {
			return err
		}
		return p.SetName(name)
	})
	defer release()
	return settingsOf(fut.Struct())
}

// settingsOf reads the settings a method returned.
func settingsOf[R interface {
	Settings() (schema.PluginSettings, error)
}](res R, err error) (*PluginSettings, error) {
	if err != nil {
		return nil, cleanErr(err)
	}
	ps, err := res.Settings()
	if err != nil {
		return nil, err
	}
	return readSettings(ps)
}

func readSettings(ps schema.PluginSettings) (*PluginSettings, error) {
	out := &PluginSettings{User: ps.User()}
	out.Scope, _ = ps.Scope()
	out.Problem, _ = ps.Problem()
	for _, f := range []struct {
		get func() ([]byte, error)
		dst *map[string]any
	}{{ps.Values, &out.Values}, {ps.Stored, &out.Stored}} {
		b, err := f.get()
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, f.dst); err != nil {
			return nil, fmt.Errorf("settings from the daemon: %w", err)
		}
	}
	schemaDoc, _ := ps.Schema()
	out.Schema = json.RawMessage(append([]byte(nil), schemaDoc...))
	if ui, _ := ps.Ui(); len(ui) > 0 {
		out.UI = json.RawMessage(append([]byte(nil), ui...))
	}
	return out, nil
}

// UserSettings reads one user's settings of a plugin on that user's behalf
// (secrets masked). Pass the id of the user the host authenticated, never
// one taken from the request.
func (s *Session) UserSettings(ctx context.Context, plugin string, user int64) (*PluginSettings, error) {
	l := s.link.Load()
	if l == nil {
		return nil, fmt.Errorf("settings of plugin %q: %w", plugin, ErrDaemonAway)
	}
	fut, release := l.s.UserSettings(ctx, func(p schema.HostSession_userSettings_Params) error {
		p.SetUser(user)
		return p.SetPlugin(plugin)
	})
	defer release()
	return settingsOf(fut.Struct())
}

// SetUserSettings writes one user's settings of a plugin on that user's
// behalf: a partial update (nil resets a key to its default, a secret sent
// back masked keeps its value), validated by the daemon; an invalid write
// fails as invalid (errdefs.ErrInvalid) naming each bad field.
func (s *Session) SetUserSettings(ctx context.Context, plugin string, user int64, values map[string]any) (*PluginSettings, error) {
	l := s.link.Load()
	if l == nil {
		return nil, fmt.Errorf("settings of plugin %q: %w", plugin, ErrDaemonAway)
	}
	doc, err := json.Marshal(values)
	if err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	fut, release := l.s.SetUserSettings(ctx, func(p schema.HostSession_setUserSettings_Params) error {
		p.SetUser(user)
		if err := p.SetValues(doc); err != nil {
			return err
		}
		return p.SetPlugin(plugin)
	})
	defer release()
	return settingsOf(fut.Struct())
}
