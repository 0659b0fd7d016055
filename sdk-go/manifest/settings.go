package manifest

import (
	"fmt"
	"path"
	"strings"
)

// The settings scopes.
const (
	// ScopeGlobal settings are the server owner's: one set per plugin.
	ScopeGlobal = "global"
	// ScopeUser settings are each user's own: one set per plugin and user.
	ScopeUser = "user"
)

// Settings declares the plugin's settings, per scope. Each declared scope
// names a JSON Schema file; the daemon (package daemon/settings) reads and
// compiles the files, validates every write against them and stores the
// values. This package only checks the paths: it never reads the files.
type Settings struct {
	// Global is the server owner's settings, nil if the plugin has none.
	Global *SettingsScope `json:"global,omitempty" toml:"global,omitempty"`
	// User is each user's own settings, nil if the plugin has none.
	User *SettingsScope `json:"user,omitempty" toml:"user,omitempty"`
}

// SettingsScope names the files that describe one scope's settings.
type SettingsScope struct {
	// Schema is a JSON Schema file (draft 2020-12 unless it says
	// otherwise), relative to the plugin directory. Required.
	Schema string `json:"schema" toml:"schema"`
	// UI is an optional JSON Forms UI schema file for layout, relative to
	// the plugin directory.
	UI string `json:"ui,omitempty" toml:"ui,omitempty"`
}

// Scope returns the declaration of the scope named name (ScopeGlobal or
// ScopeUser), or nil if the manifest does not declare it or name is not a
// scope.
func (s Settings) Scope(name string) *SettingsScope {
	switch name {
	case ScopeGlobal:
		return s.Global
	case ScopeUser:
		return s.User
	}
	return nil
}

// IsZero reports whether the manifest declares no settings.
func (s Settings) IsZero() bool { return s.Global == nil && s.User == nil }

// settingsPathProblem says what is wrong with a settings file path, or
// returns "". Paths are slash-separated, relative to the plugin
// directory, clean, and name a file inside it.
func settingsPathProblem(p string) string {
	switch {
	case strings.IndexByte(p, 0) >= 0:
		return "contains a NUL byte"
	case strings.HasPrefix(p, "/"):
		return fmt.Sprintf("%q is absolute; write a path relative to the plugin directory", p)
	case strings.Contains(p, `\`):
		return fmt.Sprintf("%q contains a backslash; separate directories with \"/\"", p)
	case !localPath(p):
		return fmt.Sprintf("%q leaves the plugin directory; \"..\" is not allowed", p)
	case path.Clean(p) == ".":
		return fmt.Sprintf("%q names the plugin directory, not a file", p)
	case path.Clean(p) != p:
		return fmt.Sprintf("%q is not a clean path (write %q)", p, path.Clean(p))
	}
	return ""
}
