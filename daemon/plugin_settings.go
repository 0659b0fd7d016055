package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Plugin settings (manifest [settings]): the daemon validates every write
// against the plugin's JSON Schema (package settings), stores the values
// with the plugin's data (registry.SettingsStore), shows secrets to
// operators and hosts only masked, and hands the values to the plugin
// through the Settings capability, telling it of every change (no restart).

// PluginSettings is one scope of a plugin's settings as operators and hosts
// see them: secrets masked.
type PluginSettings struct {
	Scope          string
	User           int64
	Values, Stored map[string]any
	Schema, UI     json.RawMessage
	Problem        string // why Stored fails the current schema, or ""
}

// unitSettings is a unit's compiled settings, for the directory of the
// record they were loaded from.
type unitSettings struct {
	mu  sync.Mutex // serializes read-merge-validate-write of the values
	dir string
	set *settings.Set
	// srv is the running instance's Settings capability, nil if none.
	srv *settingsServer
}

// settingsSet returns the unit's compiled settings schemas, loading them
// again when the plugin's files changed (an upgrade).
func (u *unit) settingsSet() (*settings.Set, error) {
	u.mu.Lock()
	rec := u.rec
	us := &u.settings
	u.mu.Unlock()
	us.mu.Lock()
	defer us.mu.Unlock()
	return u.settingsSetLocked(rec)
}

func (u *unit) settingsSetLocked(rec registry.Record) (*settings.Set, error) {
	us := &u.settings
	if us.set != nil && us.dir == rec.Dir {
		return us.set, nil
	}
	set, err := settings.LoadDir(rec.Dir, rec.Manifest.Settings)
	if err != nil {
		return nil, fmt.Errorf("settings of plugin %q: %w", u.name, err)
	}
	us.set, us.dir = set, rec.Dir
	return set, nil
}

// settingsScope checks scope and user and returns the scope's schema.
func (u *unit) settingsScope(set *settings.Set, scope string, user int64) (*settings.Scope, error) {
	switch scope {
	case "global":
		if user != 0 {
			return nil, errdefs.New(errdefs.ErrInvalid, "global settings belong to no user: give user 0")
		}
	case "user":
		if user <= 0 {
			return nil, errdefs.New(errdefs.ErrInvalid, "user settings need the user's id (a positive number)")
		}
	default:
		return nil, errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("settings scope %q: want global or user", scope))
	}
	sc := set.Scope(scope)
	if sc == nil {
		return nil, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("plugin %q has no %s settings", u.name, scope))
	}
	return sc, nil
}

// Settings returns one scope of a plugin's settings, secrets masked.
func (d *Daemon) Settings(name, scope string, user int64) (PluginSettings, error) {
	u, err := d.unit(name)
	if err != nil {
		return PluginSettings{}, err
	}
	set, err := u.settingsSet()
	if err != nil {
		return PluginSettings{}, err
	}
	sc, err := u.settingsScope(set, scope, user)
	if err != nil {
		return PluginSettings{}, err
	}
	stored, _, err := d.store.Settings(name).Get(scope, user)
	if err != nil {
		return PluginSettings{}, err
	}
	return view(sc, scope, user, stored), nil
}

// view is what operators and hosts see of stored values.
func view(sc *settings.Scope, scope string, user int64, stored map[string]any) PluginSettings {
	if stored == nil {
		stored = map[string]any{}
	}
	ps := PluginSettings{
		Scope: scope, User: user,
		Values: sc.Schema.Mask(sc.Schema.Effective(stored)),
		Stored: sc.Schema.Mask(stored),
		Schema: sc.Doc, UI: sc.UI,
	}
	if err := sc.Schema.Check(stored); err != nil {
		ps.Problem = err.Error()
	}
	return ps
}

// SetSettings validates and stores a write to a plugin's settings (see
// schema/control.capnp setSettings) and tells the running plugin.
func (d *Daemon) SetSettings(name, scope string, user int64, values map[string]any, replace bool) (PluginSettings, error) {
	u, err := d.unit(name)
	if err != nil {
		return PluginSettings{}, err
	}
	u.mu.Lock()
	rec := u.rec
	u.mu.Unlock()
	us := &u.settings
	us.mu.Lock()
	set, err := u.settingsSetLocked(rec)
	if err != nil {
		us.mu.Unlock()
		return PluginSettings{}, err
	}
	sc, err := u.settingsScope(set, scope, user)
	if err != nil {
		us.mu.Unlock()
		return PluginSettings{}, err
	}
	store := d.store.Settings(name)
	stored, _, err := store.Get(scope, user)
	if err != nil {
		us.mu.Unlock()
		return PluginSettings{}, err
	}
	next := values
	if !replace {
		next = sc.Schema.Merge(stored, values)
	}
	if next == nil {
		next = map[string]any{}
	}
	if err := sc.Schema.Validate(next); err != nil {
		us.mu.Unlock()
		return PluginSettings{}, fmt.Errorf("%s settings of plugin %q not saved:\n%w", scope, name, err)
	}
	if err := store.Put(scope, user, next); err != nil {
		us.mu.Unlock()
		return PluginSettings{}, err
	}
	srv := us.srv
	us.mu.Unlock()
	if user == 0 {
		u.logf("%s settings changed by the operator", scope)
	} else {
		u.logf("%s settings of user %d changed", scope, user)
	}
	if srv != nil {
		srv.notify(scope, user)
	}
	return view(sc, scope, user, next), nil
}

// checkSettingsAfterUpgrade flags stored values that the plugin's new
// schemas no longer accept: they are kept, logged, and shown with their
// problem (PluginSettings.Problem) until someone fixes them.
func (d *Daemon) checkSettingsAfterUpgrade(u *unit) {
	set, err := u.settingsSet()
	if err != nil {
		u.logf("settings: %v", err)
		return
	}
	store := d.store.Settings(u.name)
	check := func(scope string, user int64) {
		sc := set.Scope(scope)
		stored, ok, err := store.Get(scope, user)
		if sc == nil || err != nil || !ok {
			return
		}
		if err := sc.Schema.Check(stored); err != nil {
			who := "the operator's"
			if user != 0 {
				who = fmt.Sprintf("user %d's", user)
			}
			u.logf("after the upgrade, %s %s settings no longer validate (kept; fix them with dimplugctl config): %v", who, scope, err)
			d.log.Warn("plugin settings no longer validate after an upgrade", "plugin", u.name, "scope", scope, "user", user, "err", err)
		}
	}
	check("global", 0)
	users, _ := store.Users()
	for _, id := range users {
		check("user", id)
	}
}

// settingsServer is the Settings capability of one plugin instance.
type settingsServer struct {
	u *unit
	q callQueue // change notifications, in order

	mu       sync.Mutex
	watchers []schema.SettingsWatcher
	closed   bool
}

func newSettingsServer(u *unit) *settingsServer {
	s := &settingsServer{u: u}
	u.settings.mu.Lock()
	u.settings.srv = s
	u.settings.mu.Unlock()
	return s
}

func (s *settingsServer) Get(ctx context.Context, call schema.Settings_get) error {
	scope, err := call.Args().Scope()
	if err != nil {
		return err
	}
	user := call.Args().User()
	set, err := s.u.settingsSet()
	if err != nil {
		return errdefs.ToWire(err)
	}
	sc, err := s.u.settingsScope(set, scope, user)
	if err != nil {
		return errdefs.ToWire(err)
	}
	stored, _, err := s.u.d.store.Settings(s.u.name).Get(scope, user)
	if err != nil {
		return errdefs.ToWire(err)
	}
	doc, err := json.Marshal(sc.Schema.Effective(stored))
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetValues(doc)
}

// maxSettingsWatchers bounds the watchers one instance may register.
const maxSettingsWatchers = 16

func (s *settingsServer) Watch(ctx context.Context, call schema.Settings_watch) error {
	w := call.Args().Watcher()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errdefs.ToWire(errdefs.New(errdefs.ErrUnavailable, "the plugin instance has ended"))
	}
	if len(s.watchers) >= maxSettingsWatchers {
		return errdefs.ToWire(errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("at most %d settings watchers", maxSettingsWatchers)))
	}
	s.watchers = append(s.watchers, w.AddRef())
	return nil
}

// settingsNotifyTimeout bounds one change notification to a plugin.
const settingsNotifyTimeout = 5 * time.Second

// notify tells every watcher of a change, in order, off the caller's path.
func (s *settingsServer) notify(scope string, user int64) {
	s.q.push(s.u.d, func() {
		s.mu.Lock()
		ws := append([]schema.SettingsWatcher(nil), s.watchers...)
		s.mu.Unlock()
		for _, w := range ws {
			ctx, cancel := context.WithTimeout(s.u.d.ctx, settingsNotifyTimeout)
			fut, release := w.Changed(ctx, func(p schema.SettingsWatcher_changed_Params) error {
				p.SetUser(user)
				return p.SetScope(scope)
			})
			_, err := fut.Struct()
			release()
			cancel()
			if err != nil {
				s.u.logf("settings watcher: %v", err)
			}
		}
	})
}

// Shutdown releases the watchers when the plugin's connection drops the
// capability (go-capnp calls it once the last reference is gone).
func (s *settingsServer) Shutdown() {
	s.mu.Lock()
	ws := s.watchers
	s.watchers, s.closed = nil, true
	s.mu.Unlock()
	for _, w := range ws {
		w.Release()
	}
	s.u.settings.mu.Lock()
	if s.u.settings.srv == s {
		s.u.settings.srv = nil
	}
	s.u.settings.mu.Unlock()
}

// UserSettings and SetUserSettings are the host face's: a host reads and
// writes one user's settings on that user's behalf (never the global ones).

func (h *hostSession) UserSettings(ctx context.Context, call schema.HostSession_userSettings) error {
	name, user, err := readUserSettingsArgs(call.Args())
	if err != nil {
		return errdefs.ToWire(err)
	}
	ps, err := h.d.Settings(name, "user", user)
	if err != nil {
		return errdefs.ToWire(err)
	}
	return settingsResults(call.AllocResults, ps)
}

func (h *hostSession) SetUserSettings(ctx context.Context, call schema.HostSession_setUserSettings) error {
	name, user, err := readUserSettingsArgs(call.Args())
	if err != nil {
		return errdefs.ToWire(err)
	}
	doc, err := call.Args().Values()
	if err != nil {
		return err
	}
	if len(doc) > maxSettingsDoc {
		return errdefs.ToWire(errdefs.WithClass(fmt.Errorf("settings of %d bytes: at most %d", len(doc), maxSettingsDoc), errdefs.ErrInvalid))
	}
	values, err := settings.DecodeValues(doc)
	if err != nil {
		return errdefs.ToWire(err)
	}
	ps, err := h.d.SetSettings(name, "user", user, values, false)
	if err != nil {
		return errdefs.ToWire(err)
	}
	return settingsResults(call.AllocResults, ps)
}

// readUserSettingsArgs reads and checks the host face's settings arguments.
func readUserSettingsArgs(a interface {
	Plugin() (string, error)
	User() int64
}) (string, int64, error) {
	name, err := a.Plugin()
	if name, err = readName("plugin", name, err); err != nil {
		return "", 0, err
	}
	if a.User() <= 0 {
		return "", 0, errdefs.New(errdefs.ErrInvalid, "user settings need the user's id (a positive number)")
	}
	return name, a.User(), nil
}
