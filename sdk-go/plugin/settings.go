package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// ErrNoSettings is returned by a Settings method when the plugin declares
// no settings (manifest [settings]).
var ErrNoSettings = errors.New("this plugin declares no settings")

// Settings are the plugin's settings as the operator (scope "global") and
// each user (scope "user") set them, validated by the daemon against the
// plugin's schemas; secrets come in full. Read them in Init and again when
// OnChange says they changed: no restart is needed.
type Settings struct {
	c capRef[schema.Settings]

	mu       sync.Mutex
	handlers []func(scope string, user int64)
	watching bool
}

// Global decodes the global settings (defaults overlaid with what the
// operator set) into v, a pointer to a struct or a map.
func (s *Settings) Global(ctx context.Context, v any) error { return s.get(ctx, "global", 0, v) }

// User decodes one user's settings into v.
func (s *Settings) User(ctx context.Context, user int64, v any) error {
	return s.get(ctx, "user", user, v)
}

func (s *Settings) get(ctx context.Context, scope string, user int64, v any) error {
	if s == nil {
		return ErrNoSettings
	}
	c := s.c.get()
	defer c.Release()
	fut, release := c.Get(ctx, func(p schema.Settings_get_Params) error {
		p.SetUser(user)
		return p.SetScope(scope)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return fmt.Errorf("%s settings: %w", scope, err)
	}
	doc, err := res.Values()
	if err != nil {
		return fmt.Errorf("%s settings: %w", scope, err)
	}
	if err := json.Unmarshal(doc, v); err != nil {
		return fmt.Errorf("%s settings: %w", scope, err)
	}
	return nil
}

// OnChange registers f, called after every change of the settings with
// the scope and user that changed (user 0 for global), one call at a time
// and in the order of the changes. Read the new values from f.
func (s *Settings) OnChange(ctx context.Context, f func(scope string, user int64)) error {
	if s == nil {
		return ErrNoSettings
	}
	s.mu.Lock()
	s.handlers = append(s.handlers, f)
	start := !s.watching
	s.watching = true
	s.mu.Unlock()
	if !start {
		return nil
	}
	return s.watch(ctx)
}

// watch registers this plugin's watcher with the daemon's capability.
func (s *Settings) watch(ctx context.Context) error {
	c := s.c.get()
	defer c.Release()
	w := schema.SettingsWatcher_ServerToClient(&settingsWatcher{s: s})
	defer w.Release()
	fut, release := c.Watch(ctx, func(p schema.Settings_watch_Params) error { return p.SetWatcher(w.AddRef()) })
	defer release()
	if _, err := fut.Struct(); err != nil {
		return fmt.Errorf("watch settings: %w", err)
	}
	return nil
}

// rebind takes the capability of a daemon upgraded in place and watches
// it again if the plugin was watching.
func (s *Settings) rebind(c schema.Settings) {
	s.c.set(c)
	s.mu.Lock()
	watching := s.watching
	s.mu.Unlock()
	if watching {
		// Not on the handshake's path: the new daemon serves the call
		// once the handshake is answered.
		go func() { _ = s.watch(context.Background()) }()
	}
}

type settingsWatcher struct{ s *Settings }

func (w *settingsWatcher) Changed(ctx context.Context, call schema.SettingsWatcher_changed) error {
	scope, err := call.Args().Scope()
	if err != nil {
		return err
	}
	user := call.Args().User()
	w.s.mu.Lock()
	hs := append([]func(string, int64){}, w.s.handlers...)
	w.s.mu.Unlock()
	return safely("settings change", func() error {
		for _, f := range hs {
			f(scope, user)
		}
		return nil
	})
}
