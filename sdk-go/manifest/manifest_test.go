package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/parse")

// TestParseGolden parses each testdata/parse/*.toml and compares the result
// with the .golden file next to it: the manifest as JSON, or "error:" and
// the exact error text. Run with -update to rewrite the golden files, then
// review the diff.
func TestParseGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/parse/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test cases: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			m, err := Parse(data, FileName)
			if err != nil {
				if m != nil {
					t.Errorf("Parse returned a manifest with an error")
				}
				got = []byte("error:\n" + err.Error() + "\n")
			} else {
				got, err = json.MarshalIndent(m, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, '\n')
			}
			golden := strings.TrimSuffix(file, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Parse(%s) mismatch\ngot:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}

func TestParseErrorsNameFields(t *testing.T) {
	const base = "name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"x\"\n"
	hook := func(extra string) string {
		return base + "[[hooks]]\nname = \"h\"\nphase = \"request\"\nmethod = \"GET\"\nroute = \"/a\"\n" + extra
	}
	tests := []struct {
		name, toml, want string
	}{
		{"source names file", "name = 1", "my/plugin.toml: name: want a string, got integer"},
		{"syntax has line", "name = \"x\"\n\nversion = 1.0.0.0\n", "my/plugin.toml: line 3, column"},
		{"name too long", strings.Replace(base, `"x"`, `"`+strings.Repeat("a", 41)+`"`, 1), "name: \"aaaa"},
		{"name digit first", strings.Replace(base, `"x"`, `"1x"`, 1), `name: "1x" is not a valid name`},
		{"version leading zero", strings.Replace(base, `"1.0.0"`, `"1.02.0"`, 1), `version: "1.02.0" is not a semantic version`},
		{"version empty pre", strings.Replace(base, `"1.0.0"`, `"1.0.0-"`, 1), `version: "1.0.0-" is not a semantic version`},
		{"entrypoint dot", strings.Replace(base, `entrypoint = "x"`, `entrypoint = "./"`, 1), `entrypoint: "./" names the plugin directory`},
		{"hook method lowercase", strings.Replace(hook(""), `"GET"`, `"post"`, 1), `hooks[0].method: "post" must be uppercase (write "POST")`},
		{"hook deadline zero", hook(`deadline = "0ms"`), "hooks[0].deadline: 0ms must be positive"},
		{"hook deadline max", hook(`deadline = "60001ms"`), "hooks[0].deadline: 60001ms is longer than the maximum of 60s"},
		{"hook failure", hook(`failure = "open"`), `hooks[0].failure: "open" is not a failure policy (want fail-open or fail-closed)`},
		{"hook unknown key", hook(`methods = ["GET"]`), `hooks[0].methods: unknown key (did you mean "method"?)`},
		{"hook wildcard empty", strings.Replace(hook(""), `"/a"`, `"/a/*"`, 1), `hooks[0].route: "/a/*" has "*" without a parameter name`},
		{"quoted unknown key", base + "\"a b\" = 1\n", `"a b": unknown key`},
		{"cpu inf", base + "[permissions]\ncpu = inf\n", "permissions.cpu: +Inf is not a number of cores"},
		{"size overflow", base + "[permissions]\nmemory = \"9999999999TiB\"\n", `permissions.memory: size "9999999999TiB" is too large`},
		{"args NUL", base + "args = [\"a\\u0000b\"]\n", "args[0]: contains a NUL byte"},
		{"description cap", base + "description = \"" + strings.Repeat("d", MaxDescriptionLen+1) + "\"\n", "description: is 1025 bytes; the limit is 1024"},
		{"too large", base + "#" + strings.Repeat(" ", MaxFileSize), "my/plugin.toml: file is larger than the 1 MiB limit"},
		{"settings not a table", base + "settings = 1\n", "settings: want a table ([settings]), got integer"},
		{"settings scope array", base + "[[settings.global]]\nschema = \"s.json\"\n", "settings.global: want a table ([settings.global]), got array"},
		{"settings scope case", base + "[settings.Global]\nschema = \"s.json\"\n", `settings.Global: unknown key (did you mean "global"?)`},
		{"settings unknown scope", base + "[settings.admin]\nschema = \"s.json\"\n", `settings.admin: unknown key`},
		{"settings schema missing", base + "[settings.global]\nui = \"ui.json\"\n", "settings.global.schema: required field is missing"},
		{"settings schema empty", base + "[settings.user]\nschema = \"\"\n", "settings.user.schema: must not be empty"},
		{"settings schema type", base + "[settings.user]\nschema = [\"s.json\"]\n", "settings.user.schema: want a string, got array"},
		{"settings schema NUL", base + "[settings.global]\nschema = \"s\\u0000.json\"\n", "settings.global.schema: contains a NUL byte"},
		{"settings schema absolute", base + "[settings.global]\nschema = \"/s.json\"\n", `settings.global.schema: "/s.json" is absolute`},
		{"settings schema dotdot inside", base + "[settings.global]\nschema = \"a/../../s.json\"\n", `settings.global.schema: "a/../../s.json" leaves the plugin directory`},
		{"settings schema unclean", base + "[settings.global]\nschema = \"a/./s.json\"\n", `settings.global.schema: "a/./s.json" is not a clean path (write "a/s.json")`},
		{"settings schema trailing slash", base + "[settings.global]\nschema = \"settings/\"\n", `settings.global.schema: "settings/" is not a clean path (write "settings")`},
		{"settings schema backslash", base + "[settings.global]\nschema = \"a\\\\s.json\"\n", `settings.global.schema: "a\\s.json" contains a backslash`},
		{"settings ui dotdot", base + "[settings.user]\nschema = \"s.json\"\nui = \"../ui.json\"\n", `settings.user.ui: "../ui.json" leaves the plugin directory`},
		{"settings ui unknown key", base + "[settings.user]\nschema = \"s.json\"\nlayout = \"ui.json\"\n", `settings.user.layout: unknown key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.toml), "my/plugin.toml")
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseCollectsAllProblemsOnePerLine(t *testing.T) {
	_, err := Parse([]byte("name = \"A\"\nversion = \"x\"\nentrypoint = \"/x\"\n"), "plugin.toml")
	if err == nil {
		t.Fatal("want error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got %d:\n%v", len(lines), err)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "plugin.toml: ") {
			t.Errorf("line %q does not name the file", l)
		}
	}
}

func TestParseSyntaxErrorUnwrapsToParseError(t *testing.T) {
	_, err := Parse([]byte("name = \"x\"\nname = \"y\"\n"), "plugin.toml")
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v does not wrap toml.ParseError", err)
	}
	if pe.Position.Line != 2 {
		t.Errorf("line = %d, want 2", pe.Position.Line)
	}
}

func TestParseDefaults(t *testing.T) {
	m, err := Parse([]byte(`
name = "d"
version = "1.0.0"
entrypoint = "d"
[[hooks]]
name = "r"
phase = "route"
method = "GET"
route = "/r"
[[hooks]]
name = "q"
phase = "request"
method = "GET"
route = "/q"
[[streams]]
name = "s"
kind = "audio/segment"
role = "transform"
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if m.API != (VersionRange{1, 1}) {
		t.Errorf("API = %v, want 1", m.API)
	}
	if h := m.Hooks[0]; h.Failure != FailClosed || h.Deadline.Duration != DefaultHookDeadline {
		t.Errorf("route hook = %+v, want fail-closed and the default deadline", h)
	}
	if h := m.Hooks[1]; h.Failure != FailOpen {
		t.Errorf("request hook failure = %s, want fail-open", h.Failure)
	}
	if s := m.Streams[0]; s.Failure != FailOpen || s.Deadline.Duration != DefaultStreamDeadline {
		t.Errorf("stream = %+v, want fail-open and the default deadline", s)
	}
	if !m.Permissions.IsZero() {
		t.Errorf("permissions = %+v, want none", m.Permissions)
	}
}

// TestRoundTrip checks that a parsed manifest survives JSON (how the daemon
// persists it) and TOML (how a CLI would write one) unchanged.
func TestRoundTrip(t *testing.T) {
	data, err := os.ReadFile("testdata/parse/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(data, FileName)
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON Manifest
	if err := json.Unmarshal(j, &fromJSON); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*m, fromJSON) {
		t.Errorf("JSON round trip:\n got %+v\nwant %+v", fromJSON, *m)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(m); err != nil {
		t.Fatal(err)
	}
	fromTOML, err := Parse(buf.Bytes(), "encoded.toml")
	if err != nil {
		t.Fatalf("re-parse encoded TOML: %v\n%s", err, buf.Bytes())
	}
	if !reflect.DeepEqual(m, fromTOML) {
		t.Errorf("TOML round trip:\n got %+v\nwant %+v\n%s", fromTOML, m, buf.Bytes())
	}
}

func TestSettingsScope(t *testing.T) {
	g := &SettingsScope{Schema: "settings/global.json", UI: "settings/global.ui.json"}
	u := &SettingsScope{Schema: "settings/user.json"}
	tests := []struct {
		name     string
		s        Settings
		zero     bool
		global   *SettingsScope
		user     *SettingsScope
		unknown  *SettingsScope
		wantJSON string
	}{
		{"none", Settings{}, true, nil, nil, nil, `{}`},
		{"global", Settings{Global: g}, false, g, nil, nil, `{"global":{"schema":"settings/global.json","ui":"settings/global.ui.json"}}`},
		{"user", Settings{User: u}, false, nil, u, nil, `{"user":{"schema":"settings/user.json"}}`},
		{"both", Settings{Global: g, User: u}, false, g, u, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.IsZero(); got != tt.zero {
				t.Errorf("IsZero = %v, want %v", got, tt.zero)
			}
			if got := tt.s.Scope(ScopeGlobal); got != tt.global {
				t.Errorf("Scope(global) = %v, want %v", got, tt.global)
			}
			if got := tt.s.Scope(ScopeUser); got != tt.user {
				t.Errorf("Scope(user) = %v, want %v", got, tt.user)
			}
			if got := tt.s.Scope("admin"); got != nil {
				t.Errorf("Scope(admin) = %v, want nil", got)
			}
			if tt.wantJSON != "" {
				b, err := json.Marshal(tt.s)
				if err != nil || string(b) != tt.wantJSON {
					t.Errorf("JSON = %s (%v), want %s", b, err, tt.wantJSON)
				}
			}
		})
	}
	// A manifest without settings keeps the JSON the daemon persisted
	// before settings existed: no "settings" key.
	m, err := Parse([]byte("name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"x\"\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(m); strings.Contains(string(b), "settings") {
		t.Errorf("manifest without settings marshals a settings key: %s", b)
	}
	m, err = Parse([]byte("name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"x\"\n[settings.user]\nschema = \"s/u.json\"\nui = \"s/ui.json\"\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Settings{User: &SettingsScope{Schema: "s/u.json", UI: "s/ui.json"}}); !reflect.DeepEqual(m.Settings, want) {
		t.Errorf("Settings = %+v, want %+v", m.Settings, want)
	}
}

func TestVersionRange(t *testing.T) {
	r := VersionRange{1, 3}
	for v, want := range map[uint16]bool{0: false, 1: true, 2: true, 3: true, 4: false} {
		if got := r.Contains(v); got != want {
			t.Errorf("%v.Contains(%d) = %v, want %v", r, v, got, want)
		}
	}
	if s := r.String(); s != "1–3" {
		t.Errorf("String = %q", s)
	}
	if s := (VersionRange{2, 2}).String(); s != "2" {
		t.Errorf("String = %q", s)
	}
}

func TestDurationText(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"1.5s"`), &d); err != nil || d.Duration != 1500*time.Millisecond {
		t.Fatalf("unmarshal: %v %v", d, err)
	}
	b, _ := json.Marshal(Duration{50 * time.Millisecond})
	if string(b) != `"50ms"` {
		t.Errorf("marshal = %s", b)
	}
	if err := d.UnmarshalText([]byte("soon")); err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Errorf("bad duration error = %v", err)
	}
}

// writePlugin writes a plugin directory with a manifest and an entrypoint.
func writePlugin(t *testing.T, manifest string, files map[string]os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if mode.IsDir() {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoad(t *testing.T) {
	const m = "name = \"p\"\nversion = \"1.0.0\"\nentrypoint = \"bin/p\"\n"
	t.Run("ok", func(t *testing.T) {
		dir := writePlugin(t, m, map[string]os.FileMode{"bin/p": 0o755})
		got, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "p" || got.Entrypoint != "bin/p" {
			t.Errorf("Load = %+v", got)
		}
	})
	t.Run("dot slash", func(t *testing.T) {
		dir := writePlugin(t, strings.Replace(m, `"bin/p"`, `"./bin/p"`, 1), map[string]os.FileMode{"bin/p": 0o755})
		if _, err := Load(dir); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("symlink inside", func(t *testing.T) {
		dir := writePlugin(t, m, map[string]os.FileMode{"real": 0o755, "bin": os.ModeDir})
		if err := os.Symlink("../real", filepath.Join(dir, "bin/p")); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir); err != nil {
			t.Fatal(err)
		}
	})
	tests := []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"no manifest", func(t *testing.T) string { return t.TempDir() }, "no plugin.toml in"},
		{"missing entrypoint", func(t *testing.T) string { return writePlugin(t, m, nil) },
			`entrypoint "bin/p" does not exist: build it first or fix entrypoint in plugin.toml`},
		{"not executable", func(t *testing.T) string { return writePlugin(t, m, map[string]os.FileMode{"bin/p": 0o644}) },
			`entrypoint "bin/p" is not executable: chmod +x it or build it first`},
		{"directory", func(t *testing.T) string { return writePlugin(t, m, map[string]os.FileMode{"bin/p": os.ModeDir}) },
			`entrypoint "bin/p" is a directory`},
		{"symlink escapes", func(t *testing.T) string {
			dir := writePlugin(t, m, map[string]os.FileMode{"bin": os.ModeDir})
			if err := os.Symlink("/bin/sh", filepath.Join(dir, "bin/p")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, `entrypoint "bin/p" is a symbolic link that leads outside the plugin directory`},
		{"invalid manifest", func(t *testing.T) string {
			return writePlugin(t, "name = \"p\"\n", nil)
		}, "plugin.toml: version: required field is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.setup(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
