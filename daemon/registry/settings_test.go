package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// The settings files a plugin in these tests ships, and the manifest text
// that declares them.
const (
	globalSchema = `{"type": "object", "additionalProperties": false, "properties": {
		"max_rating": {"type": "integer", "maximum": 18, "default": 12},
		"api_key": {"type": "string", "writeOnly": true}
	}}`
	userSchema       = `{"type": "object", "properties": {"theme": {"enum": ["light", "dark"], "default": "light"}}}`
	globalUI         = `{"type": "VerticalLayout", "elements": [{"type": "Control", "scope": "#/properties/max_rating"}]}`
	settingsManifest = "[settings.global]\nschema = \"settings/global.json\"\nui = \"settings/global.ui.json\"\n[settings.user]\nschema = \"settings/user.json\"\n"
)

// writeSettingsPlugin is writePlugin plus the settings files: the ones
// above, with files overriding them by name ("" leaves a file out).
func writeSettingsPlugin(t *testing.T, name, version string, files map[string]string) string {
	t.Helper()
	dir := writePlugin(t, name, version, settingsManifest)
	all := map[string]string{
		"settings/global.json":    globalSchema,
		"settings/global.ui.json": globalUI,
		"settings/user.json":      userSchema,
	}
	for f, content := range files {
		all[f] = content
	}
	for f, content := range all {
		if content != "" {
			writeTestFile(t, filepath.Join(dir, f), content, 0o644)
		}
	}
	return dir
}

func TestSettingsStore(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "media", "1.0.0", ""), InstallOptions{})
	install(t, s, writePlugin(t, "media-badge", "1.0.0", ""), InstallOptions{})
	st := s.Settings("media")

	if v, ok, err := st.Get("global", 0); err != nil || ok || v != nil {
		t.Fatalf("Get before any Put = %v, %v, %v; want nothing", v, ok, err)
	}
	put := func(ss *SettingsStore, scope string, user int64, values map[string]any) {
		t.Helper()
		if err := ss.Put(scope, user, values); err != nil {
			t.Fatal(err)
		}
	}
	get := func(ss *SettingsStore, scope string, user int64) map[string]any {
		t.Helper()
		v, ok, err := ss.Get(scope, user)
		if err != nil || !ok {
			t.Fatalf("Get(%s, %d) = %v, %v, %v", scope, user, v, ok, err)
		}
		return v
	}

	put(st, "global", 0, map[string]any{"max_rating": json.Number("9007199254740993"), "api_key": "k", "nested": map[string]any{"a": []any{true, nil}}})
	want := map[string]any{"max_rating": json.Number("9007199254740993"), "api_key": "k", "nested": map[string]any{"a": []any{true, nil}}}
	if got := get(st, "global", 0); !reflect.DeepEqual(got, want) {
		t.Errorf("global = %v, want %v (numbers exact, as json.Number)", got, want)
	}
	// Put replaces the object; it does not merge.
	put(st, "global", 0, map[string]any{"max_rating": 3})
	if got := get(st, "global", 0); !reflect.DeepEqual(got, map[string]any{"max_rating": json.Number("3")}) {
		t.Errorf("global after second Put = %v", got)
	}

	// Users: each user has their own object; ids sort as numbers.
	for _, u := range []int64{100, 7, 12} {
		put(st, "user", u, map[string]any{"theme": "dark", "id": u})
	}
	for _, u := range []int64{100, 7, 12} {
		if got := get(st, "user", u); got["id"] != json.Number(jsonNumber(u)) {
			t.Errorf("user %d sees %v", u, got)
		}
	}
	if _, ok, err := st.Get("user", 8); ok || err != nil {
		t.Errorf("user 8, who stored nothing: found=%v, %v", ok, err)
	}
	if users, err := st.Users(); err != nil || !reflect.DeepEqual(users, []int64{7, 12, 100}) {
		t.Errorf("Users = %v, %v; want [7 12 100]", users, err)
	}
	put(st, "user", 12, nil)
	if got := get(st, "user", 12); len(got) != 0 {
		t.Errorf("user 12 after Put(nil) = %v, want an empty object", got)
	}

	// Another plugin, even one whose name starts with this one's, sees
	// nothing of it.
	other := s.Settings("media-badge")
	if _, ok, err := other.Get("global", 0); ok || err != nil {
		t.Errorf("media-badge sees global settings: %v, %v", ok, err)
	}
	if users, err := other.Users(); err != nil || len(users) != 0 {
		t.Errorf("media-badge Users = %v, %v", users, err)
	}
	put(other, "user", 7, map[string]any{"theme": "light"})
	if got := get(st, "user", 7); got["theme"] != "dark" {
		t.Errorf("media's user 7 changed by media-badge's: %v", got)
	}
}

func jsonNumber(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestSettingsStoreRefuses(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "media", "1.0.0", ""), InstallOptions{})
	st := s.Settings("media")
	// The largest object that fits: {"v":"xxx…"}.
	atLimit := map[string]any{"v": strings.Repeat("x", MaxSettingsSize-len(`{"v":""}`))}
	if err := st.Put("global", 0, atLimit); err != nil {
		t.Fatalf("Put of exactly %d bytes: %v", MaxSettingsSize, err)
	}
	over := map[string]any{"v": strings.Repeat("x", MaxSettingsSize-len(`{"v":""}`)+1)}

	tests := []struct {
		name string
		op   func() error
		is   error
		want string
	}{
		{"unknown scope", func() error { return st.Put("admin", 0, nil) }, errdefs.ErrInvalid,
			`store settings of plugin "media": settings scope "admin": want "global" or "user"`},
		{"global with a user", func() error { return third(st.Get("global", 3)) }, errdefs.ErrInvalid,
			`read the global settings of plugin "media": global settings belong to no user: pass user 0, not 3`},
		{"user without an id", func() error { return st.Put("user", 0, nil) }, errdefs.ErrInvalid,
			`store the settings of user 0 for plugin "media": user settings need the user's id (a positive number), not 0`},
		{"negative user", func() error { return third(st.Get("user", -1)) }, errdefs.ErrInvalid,
			"user settings need the user's id (a positive number), not -1"},
		{"over the size cap", func() error { return st.Put("user", 5, over) }, errdefs.ErrInvalid,
			`store the settings of user 5 for plugin "media": the values are 262145 bytes as JSON, over the 256 KiB limit per settings object`},
		{"not JSON", func() error { return st.Put("global", 0, map[string]any{"x": math.Inf(1)}) }, errdefs.ErrInvalid,
			`store the global settings of plugin "media": values are not JSON: json: unsupported value: +Inf`},
		{"not installed: Get", func() error { return third(s.Settings("nope").Get("global", 0)) }, ErrNotFound,
			`read the global settings of plugin "nope": plugin "nope" is not installed`},
		{"not installed: Put", func() error { return s.Settings("nope").Put("user", 1, nil) }, ErrNotFound,
			`store the settings of user 1 for plugin "nope": plugin "nope" is not installed`},
		{"not installed: Users", func() error { return second(s.Settings("nope").Users()) }, ErrNotFound,
			`list users with settings of plugin "nope": plugin "nope" is not installed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v\nwant %v containing %q", err, tt.is, tt.want)
			}
			if tt.is == errdefs.ErrInvalid && !errors.Is(err, ErrInvalid) {
				t.Errorf("error is not registry.ErrInvalid")
			}
		})
	}
	// Refused writes changed nothing.
	if v, _, err := st.Get("global", 0); err != nil || !reflect.DeepEqual(v, atLimit) {
		t.Errorf("global after refused writes: %v", err)
	}
	if users, _ := st.Users(); len(users) != 0 {
		t.Errorf("Users after refused writes = %v", users)
	}
}

// settingsKeys returns the settings bucket's keys.
func settingsKeys(t *testing.T, s *Store) []string {
	t.Helper()
	var keys []string
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSettings).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestSettingsRemoveReplaceReinstall(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	src := writeSettingsPlugin(t, "media", "1.0.0", nil)
	install(t, s, src, InstallOptions{})
	install(t, s, writePlugin(t, "media-badge", "1.0.0", ""), InstallOptions{})
	st := s.Settings("media")
	for _, put := range []struct {
		scope string
		user  int64
	}{{"global", 0}, {"user", 1}, {"user", 2}} {
		if err := st.Put(put.scope, put.user, map[string]any{"max_rating": 17}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Settings("media-badge").Put("global", 0, map[string]any{"keep": true}); err != nil {
		t.Fatal(err)
	}

	// A replace keeps the values, even under a schema they no longer
	// validate against: the daemon checks and flags them.
	stricter := strings.Replace(globalSchema, `"maximum": 18`, `"maximum": 16`, 1)
	install(t, s, writeSettingsPlugin(t, "media", "2.0.0", map[string]string{"settings/global.json": stricter}), InstallOptions{Replace: true})
	if v, ok, err := st.Get("global", 0); err != nil || !ok || v["max_rating"] != json.Number("17") {
		t.Fatalf("global after replace = %v, %v, %v", v, ok, err)
	}
	if users, _ := st.Users(); !reflect.DeepEqual(users, []int64{1, 2}) {
		t.Errorf("Users after replace = %v", users)
	}

	// Remove deletes every settings object of the plugin with it, and
	// only those.
	if err := s.Remove("media"); err != nil {
		t.Fatal(err)
	}
	if keys := settingsKeys(t, s); !reflect.DeepEqual(keys, []string{"media-badge\x00global"}) {
		t.Errorf("settings bucket after Remove = %q, want only media-badge's", keys)
	}
	if _, _, err := st.Get("global", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove = %v, want ErrNotFound", err)
	}
	if err := st.Put("global", 0, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Put after Remove = %v, want ErrNotFound", err)
	}

	// A fresh install starts without settings, also when a dimplugd that
	// did not know of settings removed the plugin and left them behind.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSettings).Put([]byte("media\x00user\x009"), []byte(`{"stale":true}`))
	}); err != nil {
		t.Fatal(err)
	}
	install(t, s, src, InstallOptions{})
	if _, ok, err := st.Get("global", 0); ok || err != nil {
		t.Errorf("global after reinstall: found=%v, %v", ok, err)
	}
	if users, err := st.Users(); err != nil || len(users) != 0 {
		t.Errorf("Users after reinstall = %v, %v; want none", users, err)
	}
	if v, ok, _ := s.Settings("media-badge").Get("global", 0); !ok || v["keep"] != true {
		t.Errorf("media-badge lost its settings: %v", v)
	}
	assertClean(t, s)
}

func TestSettingsPersistAndOlderDatabase(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	install(t, s, writePlugin(t, "media", "1.0.0", ""), InstallOptions{})
	if err := s.Settings("media").Put("user", 42, map[string]any{"theme": "dark"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	if v, ok, err := s.Settings("media").Get("user", 42); err != nil || !ok || v["theme"] != "dark" {
		t.Fatalf("after reopen: %v, %v, %v", v, ok, err)
	}

	// A schema-2 database from before settings has no settings bucket:
	// Open adds it and keeps the schema version.
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketSettings) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	if err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSettings) == nil {
			return errors.New("no settings bucket")
		}
		if v := tx.Bucket(bucketMeta).Get(keySchema); string(v) != schemaVersion {
			return errors.New("schema version is " + string(v))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Settings("media").Put("global", 0, map[string]any{}); err != nil {
		t.Errorf("Put on a database that had no settings bucket: %v", err)
	}
}

func TestInstallCompilesSettingsSchemas(t *testing.T) {
	t.Run("good schema", func(t *testing.T) {
		s := openStore(t, t.TempDir())
		rec := install(t, s, writeSettingsPlugin(t, "media", "1.0.0", nil), InstallOptions{})
		want := manifest.Settings{
			Global: &manifest.SettingsScope{Schema: "settings/global.json", UI: "settings/global.ui.json"},
			User:   &manifest.SettingsScope{Schema: "settings/user.json"},
		}
		if !reflect.DeepEqual(rec.Manifest.Settings, want) {
			t.Errorf("record settings = %+v, want %+v", rec.Manifest.Settings, want)
		}
		// The installed copy holds the files, and the record survives a
		// round trip through the database.
		got, err := s.Get("media")
		if err != nil || !reflect.DeepEqual(got.Manifest.Settings, want) {
			t.Fatalf("Get = %+v, %v", got.Manifest.Settings, err)
		}
		set, err := settings.LoadDir(got.Dir, got.Manifest.Settings)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(set.Global.UI, []byte(globalUI)) || set.User.Schema.Defaults()["theme"] != "light" {
			t.Errorf("installed settings = %+v", set)
		}
		if got := set.Global.Schema.Secrets(); !reflect.DeepEqual(got, []string{"api_key"}) {
			t.Errorf("secrets = %v", got)
		}
	})

	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"not an object schema", map[string]string{"settings/global.json": `{"type": "string"}`},
			"invalid settings schema: settings/global.json: the top level must say \"type\": \"object\""},
		{"not JSON", map[string]string{"settings/user.json": `{"type": "object",`},
			"invalid settings schema: settings/user.json: not valid JSON: unexpected end of input"},
		{"remote reference", map[string]string{"settings/user.json": `{"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}`},
			`invalid settings schema: settings/user.json: /properties/a: "$ref": "https://example.com/a.json" is not in this file`},
		{"missing schema", map[string]string{"settings/user.json": ""},
			"invalid settings schema: settings/user.json: does not exist in the plugin directory (named by settings.user.schema in plugin.toml)"},
		{"UI not JSON", map[string]string{"settings/global.ui.json": "{"},
			"invalid settings schema: settings/global.ui.json: not valid JSON"},
		{"every problem", map[string]string{"settings/global.json": `[]`, "settings/user.json": `{"type": "object", "properties": {"a": {"minimum": "1"}}}`},
			"invalid settings schema:\n  settings/global.json: want a JSON object (an object schema), got an array\n  settings/user.json: /properties/a/minimum: must be a number (got a string)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			src := writeSettingsPlugin(t, "media", "1.0.0", tt.files)
			_, err := s.InstallDir(context.Background(), src, InstallOptions{})
			if !errors.Is(err, ErrInvalid) || !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("install = %v, want ErrInvalid", err)
			}
			if prefix := `install plugin "media" from ` + src + ": " + tt.want; !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error:\n%v\nwant it to start with\n%s", err, prefix)
			}
			if _, err := s.Get("media"); !errors.Is(err, ErrNotFound) {
				t.Errorf("refused plugin is installed: %v", err)
			}
			assertClean(t, s)

			// A replace with the broken schema leaves the installed
			// version and its settings alone.
			rec := install(t, s, writeSettingsPlugin(t, "media", "1.0.0", nil), InstallOptions{})
			if err := s.Settings("media").Put("global", 0, map[string]any{"max_rating": 5}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.InstallDir(context.Background(), writeSettingsPlugin(t, "media", "2.0.0", tt.files), InstallOptions{Replace: true}); !errors.Is(err, ErrInvalid) {
				t.Fatalf("replace with a broken schema = %v", err)
			}
			if got, err := s.Get("media"); err != nil || got.Dir != rec.Dir || got.Manifest.Version != "1.0.0" {
				t.Errorf("after a refused replace: %+v, %v", got, err)
			}
			if v, ok, _ := s.Settings("media").Get("global", 0); !ok || v["max_rating"] != json.Number("5") {
				t.Errorf("settings after a refused replace = %v", v)
			}
			assertClean(t, s)
		})
	}
}
