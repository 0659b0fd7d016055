package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// A plugin's data is its key-value store and its settings values. It is
// never lost by surprise: Uninstall keeps it unless asked to purge it (a
// later install of the name takes it over), and ExportData/ImportData
// move it in the documented export format (docs/packages.md, "Data
// export").

// Uninstall stops and removes a plugin. Without purge its data is kept
// and the returned usage says how much; with purge it is deleted (and the
// usage says how much was). Purging the name of a plugin that is not
// installed deletes the data kept of it, if any.
func (d *Daemon) Uninstall(name string, purge bool) (registry.DataUsage, error) {
	u, err := d.unit(name)
	if err != nil {
		if _, kept, kerr := d.store.KeptData(name); kerr == nil && kept {
			use, err := d.store.Uninstall(name, purge) // purges, or says what is kept
			if err == nil {
				d.log.Info("kept plugin data deleted", "plugin", name, "bytes", use.Bytes)
			}
			return use, err
		}
		return registry.DataUsage{}, err
	}
	d.stopForRemoval(u)
	use, err := d.store.Uninstall(name, purge)
	if err != nil {
		u.closeLogs()
		return registry.DataUsage{}, err
	}
	u.removeLogs()
	if purge || use.Empty() {
		d.log.Info("plugin removed", "plugin", name, "data", "deleted", "bytes", use.Bytes)
	} else {
		d.log.Info("plugin removed", "plugin", name, "data", "kept", "keys", use.Keys, "settings", use.Settings, "bytes", use.Bytes)
	}
	return use, nil
}

// stopForRemoval stops u for good and forgets it, as Remove does.
func (d *Daemon) stopForRemoval(u *unit) {
	u.mu.Lock()
	u.removed = true
	u.mu.Unlock()
	d.rebuildRoutes()
	u.poke()
	<-u.done
	d.mu.Lock()
	delete(d.units, u.name)
	d.mu.Unlock()
}

// noteTakenOver logs, right after a fresh install committed and before the
// plugin started, the data the install took over from an earlier
// Uninstall (a fresh install starts empty otherwise), and remembers it so
// that undoing the install keeps that data (undoFreshInstall).
func (d *Daemon) noteTakenOver(u *unit, use registry.DataUsage) {
	d.takenOver.Delete(u.name)
	if use.Empty() {
		return
	}
	d.takenOver.Store(u.name, use)
	u.logf("kept data of a previous install: %d keys, %d settings objects (%d bytes)", use.Keys, use.Settings, use.Bytes)
	d.log.Info("plugin took over kept data", "plugin", u.name, "keys", use.Keys, "settings", use.Settings, "bytes", use.Bytes)
}

// undoFreshInstall removes a plugin whose fresh install failed: with its
// data when the install started empty, keeping it when the install took
// over data an earlier Uninstall kept.
func (d *Daemon) undoFreshInstall(name string) error {
	if _, ok := d.takenOver.LoadAndDelete(name); ok {
		_, err := d.Uninstall(name, false)
		return err
	}
	return d.Remove(name)
}

// Data export format, version 1 (docs/packages.md, "Data export").
const dataExportFormat = 1

type dataExport struct {
	Format        int            `json:"format"`
	Plugin        string         `json:"plugin"`
	PluginVersion string         `json:"plugin_version,omitempty"`
	ExportedAt    time.Time      `json:"exported_at"`
	KV            []exportedKV   `json:"kv"`
	Settings      exportSettings `json:"settings"`
}

// exportedKV is one key-value pair. A key that is valid UTF-8 is "key";
// any other is "key_base64". Values are always base64 (standard, padded).
type exportedKV struct {
	Key       *string `json:"key,omitempty"`
	KeyBase64 []byte  `json:"key_base64,omitempty"`
	Value     []byte  `json:"value_base64"`
}

type exportSettings struct {
	Global json.RawMessage            `json:"global,omitempty"`
	Users  map[string]json.RawMessage `json:"users,omitempty"`
}

// ExportData returns the plugin's data in the export format, for one
// control message: it fails when the document is larger than maxDataExport
// (exportDataStream has no such limit).
func (d *Daemon) ExportData(name string) ([]byte, error) {
	b, _, err := d.exportDoc(name)
	if err != nil {
		return nil, err
	}
	if len(b) > maxDataExport {
		return nil, errdefs.WithClass(fmt.Errorf("export the data of plugin %q: the export is %s, more than one control message carries (%s); use a newer dimplugctl, which streams it",
			name, manifest.Size(len(b)), manifest.Size(maxDataExport)), errdefs.ErrInvalid)
	}
	return b, nil
}

// exportDoc builds the export document of the plugin's data, and says how
// many keys it holds.
func (d *Daemon) exportDoc(name string) ([]byte, int, error) {
	u, err := d.unit(name)
	if err != nil {
		return nil, 0, err
	}
	u.mu.Lock()
	version := u.rec.Manifest.Version
	u.mu.Unlock()
	data, err := d.store.ExportData(name)
	if err != nil {
		return nil, 0, err
	}
	out := dataExport{Format: dataExportFormat, Plugin: name, PluginVersion: version, ExportedAt: time.Now().UTC(), KV: []exportedKV{}}
	for _, p := range data.KV {
		e := exportedKV{Value: p.Value}
		if e.Value == nil {
			e.Value = []byte{}
		}
		if utf8.ValidString(p.Key) {
			k := p.Key
			e.Key = &k
		} else {
			e.KeyBase64 = []byte(p.Key)
		}
		out.KV = append(out.KV, e)
	}
	for _, sv := range data.Settings {
		raw, err := json.Marshal(sv.Values)
		if err != nil {
			return nil, 0, err
		}
		if sv.Scope == manifest.ScopeGlobal {
			out.Settings.Global = raw
			continue
		}
		if out.Settings.Users == nil {
			out.Settings.Users = map[string]json.RawMessage{}
		}
		out.Settings.Users[strconv.FormatInt(sv.User, 10)] = raw
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, 0, err
	}
	u.logf("data exported: %d keys, %d settings objects", len(data.KV), len(data.Settings))
	return append(b, '\n'), len(data.KV), nil
}

// maxDataExport bounds an export document sent in one control message
// (exportData): at most wire.MaxMessageSize less room for the message's
// framing. With base64 that is about 47 MiB of key-value data, less than
// the 64 MiB a plugin may store: exportDataStream carries any export.
const maxDataExport = wire.MaxMessageSize - 1<<20

// maxDataImport bounds an import document: base64 makes a plugin's
// largest key-value store (64 MiB of keys and values) about 86 MiB, and
// JSON adds a little per key and the settings.
const maxDataImport = 256 << 20

// ImportData loads an export into an installed plugin's data: merged, or
// with replace instead of everything stored. The document, the key-value
// limits and each settings object (against the plugin's schema for its
// scope) are checked first; nothing is written unless all pass, and then
// all is written in one transaction. It returns the number of keys
// imported. A running plugin is told of the settings it gets; it reads
// the new key-value data on its next reads.
func (d *Daemon) ImportData(name string, doc []byte, replace bool) (int, error) {
	return d.ImportDataFrom(name, bytes.NewReader(doc), int64(len(doc)), replace)
}

// ImportDataFrom is ImportData reading the document (size bytes) from r.
func (d *Daemon) ImportDataFrom(name string, r io.Reader, size int64, replace bool) (int, error) {
	u, err := d.unit(name)
	if err != nil {
		return 0, err
	}
	invalid := func(format string, args ...any) error {
		return errdefs.WithClass(fmt.Errorf("import data into plugin %q: nothing was imported: "+format, append([]any{name}, args...)...), errdefs.ErrInvalid)
	}
	if size > maxDataImport {
		return 0, invalid("the document is %d bytes, over the %s limit", size, manifest.Size(maxDataImport))
	}
	var in dataExport
	dec := json.NewDecoder(io.LimitReader(r, maxDataImport))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return 0, invalid("not a dimplugd data export (docs/packages.md, \"Data export\"): %v", err)
	}
	if dec.More() {
		return 0, invalid("not a dimplugd data export: more than one JSON value")
	}
	switch {
	case in.Format != dataExportFormat:
		return 0, invalid("export format %d; this dimplugd reads format %d", in.Format, dataExportFormat)
	case in.Plugin != name:
		return 0, invalid("the export is of plugin %q, not %q", in.Plugin, name)
	}
	var data registry.PluginData
	for i, e := range in.KV {
		var key string
		switch {
		case e.Key != nil && e.KeyBase64 != nil:
			return 0, invalid("kv[%d] has both key and key_base64", i)
		case e.Key != nil:
			key = *e.Key
		case e.KeyBase64 != nil:
			key = string(e.KeyBase64)
		default:
			return 0, invalid("kv[%d] has no key", i)
		}
		data.KV = append(data.KV, registry.KVPair{Key: key, Value: e.Value})
	}

	u.mu.Lock()
	rec := u.rec
	u.mu.Unlock()
	us := &u.settings
	us.mu.Lock()
	defer us.mu.Unlock()
	var set *settings.Set
	scope := func(scope string, user int64, raw json.RawMessage) error {
		values, err := settings.DecodeValues(raw)
		if err != nil {
			return invalid("%s settings: %v", scope, err)
		}
		if set == nil {
			if rec.Manifest.Settings.IsZero() {
				return invalid("the export has %s settings, but plugin %q declares no settings", scope, name)
			}
			if set, err = u.settingsSetLocked(rec); err != nil {
				return err
			}
		}
		sc, err := u.settingsScope(set, scope, user)
		if err != nil {
			return invalid("%s settings: %v", scope, err)
		}
		if err := sc.Schema.Validate(values); err != nil {
			return invalid("%s settings (user %d) fail the plugin's schema:\n%w", scope, user, err)
		}
		data.Settings = append(data.Settings, registry.ScopeValues{Scope: scope, User: user, Values: values})
		return nil
	}
	if in.Settings.Global != nil {
		if err := scope(manifest.ScopeGlobal, 0, in.Settings.Global); err != nil {
			return 0, err
		}
	}
	users := make([]string, 0, len(in.Settings.Users))
	for id := range in.Settings.Users {
		users = append(users, id)
	}
	slices.Sort(users)
	for _, id := range users {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil || n <= 0 || strconv.FormatInt(n, 10) != id {
			return 0, invalid("settings.users: %q is not a user id (a positive decimal number)", id)
		}
		if err := scope(manifest.ScopeUser, n, in.Settings.Users[id]); err != nil {
			return 0, err
		}
	}
	if err := d.store.ImportData(name, data, replace); err != nil {
		return 0, err
	}
	how := "merged"
	if replace {
		how = "replacing all data"
	}
	u.logf("data imported (%s): %d keys, %d settings objects", how, len(data.KV), len(data.Settings))
	if srv := us.srv; srv != nil {
		for _, sv := range data.Settings {
			srv.notify(sv.Scope, sv.User)
		}
	}
	return len(data.KV), nil
}
