package plugintest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// WithSettings grants the plugin a settings capability, as the daemon does
// for a manifest with [settings], and sets what Settings.Global (scope
// "global", user 0) or Settings.User (scope "user") answers: v as JSON.
// For scope "user", user 0 stands for every user without values of their
// own. The harness knows no schema: give the effective values, the
// defaults overlaid with what is set, as the daemon computes them. A
// scope never given answers an error, as for a plugin that declares none.
func WithSettings(scope string, user int64, v any) Option {
	return func(c *config) {
		if c.settings == nil {
			c.settings = newFakeSettings()
		}
		if err := c.settings.set(scope, user, v); err != nil && c.err == nil {
			c.err = err
		}
	}
}

// SetSettings changes the settings the plugin reads, as an operator or a
// user writing them would, and tells the plugin: it returns once every
// handler the plugin registered with Settings.OnChange has run. The
// plugin must have been started WithSettings.
func (h *Harness) SetSettings(scope string, user int64, v any) {
	h.t.Helper()
	if h.settings == nil {
		h.t.Fatalf("plugintest: SetSettings on a plugin started without WithSettings")
	}
	if err := h.settings.set(scope, user, v); err != nil {
		h.t.Fatalf("plugintest: %v", err)
	}
	if scope == "global" {
		user = 0
	}
	h.settings.mu.Lock()
	ws := append([]schema.SettingsWatcher(nil), h.settings.watchers...)
	h.settings.mu.Unlock()
	for _, w := range ws {
		ctx, cancel := context.WithTimeout(context.Background(), h.Deadline)
		fut, release := w.Changed(ctx, func(p schema.SettingsWatcher_changed_Params) error {
			p.SetUser(user)
			return p.SetScope(scope)
		})
		_, err := fut.Struct()
		release()
		cancel()
		if err != nil {
			h.t.Fatalf("plugintest: settings change %s/%d: %v", scope, user, err)
		}
	}
}

type settingsKey struct {
	scope string
	user  int64
}

// fakeSettings implements the Settings capability in memory.
type fakeSettings struct {
	mu       sync.Mutex
	values   map[settingsKey][]byte
	scopes   map[string]bool // scopes given values
	watchers []schema.SettingsWatcher
}

func newFakeSettings() *fakeSettings {
	return &fakeSettings{values: map[settingsKey][]byte{}, scopes: map[string]bool{}}
}

func (f *fakeSettings) set(scope string, user int64, v any) error {
	switch scope {
	case "global":
		user = 0
	case "user":
	default:
		return fmt.Errorf("settings scope %q: want \"global\" or \"user\"", scope)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("settings %s/%d: %w", scope, user, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[settingsKey{scope, user}] = b
	f.scopes[scope] = true
	return nil
}

func (f *fakeSettings) Get(ctx context.Context, call schema.Settings_get) error {
	scope, err := call.Args().Scope()
	if err != nil {
		return err
	}
	user := call.Args().User()
	switch { // as the daemon checks them
	case scope == "global" && user != 0:
		return fmt.Errorf("plugintest: global settings belong to no user: give user 0")
	case scope == "user" && user <= 0:
		return fmt.Errorf("plugintest: user settings need the user's id (a positive number)")
	}
	f.mu.Lock()
	v, ok := f.values[settingsKey{scope, user}]
	if !ok {
		v, ok = f.values[settingsKey{scope, 0}]
	}
	declared := f.scopes[scope]
	f.mu.Unlock()
	if !declared {
		return fmt.Errorf("plugintest: the plugin has no %s settings (start it WithSettings)", scope)
	}
	if !ok {
		v = []byte("{}")
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetValues(v)
}

func (f *fakeSettings) Watch(ctx context.Context, call schema.Settings_watch) error {
	w := call.Args().Watcher()
	f.mu.Lock()
	f.watchers = append(f.watchers, w.AddRef())
	f.mu.Unlock()
	return nil
}

// release drops the plugin's watchers.
func (f *fakeSettings) release() {
	f.mu.Lock()
	ws := f.watchers
	f.watchers = nil
	f.mu.Unlock()
	for _, w := range ws {
		w.Release()
	}
}
