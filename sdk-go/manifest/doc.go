// Package manifest defines plugin.toml, the manifest every dimplugd plugin
// ships next to its executable. The SDK, the CLI and the daemon all read it
// through this package, so it owns the format, its defaults and its
// validation rules, plus the route-template matcher the daemon's dispatcher
// uses for hooks.
//
// This package must not import anything from daemon/ or sandbox/: plugin
// authors import it through the SDK.
//
// # Format
//
// A complete manifest, with every key the format knows:
//
//	name = "media-badge"            # required: ^[a-z][a-z0-9-]{0,39}$
//	version = "1.2.0"               # required: semver MAJOR.MINOR.PATCH[-pre][+build]
//	description = "Adds a badge header to media responses"
//	entrypoint = "media-badge"      # required: relative path inside the plugin directory
//	args = ["--verbose"]            # optional arguments after the entrypoint
//
//	[api]                           # protocol versions the plugin speaks
//	min = 1                         # optional, default 1
//	max = 1                         # optional, default min
//
//	[[hooks]]                       # zero or more REST hooks
//	name = "badge"                  # required, unique among the hooks, same charset as name
//	phase = "response"              # required: request | response | route | observe
//	method = "GET"                  # required: an uppercase HTTP method, or "*" for any
//	route = "/api/v1/media/:id"     # required: route template (see below)
//	priority = 0                    # optional, lower runs first; ties are broken by plugin name
//	deadline = "50ms"               # optional Go duration, default 250ms, at most 60s
//	failure = "fail-open"           # optional: fail-open | fail-closed (see below)
//
//	[[streams]]                     # zero or more frame-stream stages
//	name = "loudness"               # required, unique among the streams
//	kind = "audio/segment"          # required: type/subtype
//	role = "transform"              # required: transform | observe
//	priority = 0                    # optional
//	deadline = "2s"                 # optional Go duration, default 1s, at most 60s
//	failure = "fail-open"           # optional, default fail-open
//
//	[permissions]                   # everything optional; absent means the runtime default
//	memory = "64MiB"                # at least 16MiB
//	pids = 64                       # at least 16
//	cpu = 0.5                       # cores, at least 0.01
//	tmp = "16MiB"                   # size of the private writable /tmp
//	open_files = 256                # at least 16
//	read_only_paths = ["/srv/media"]                # absolute, clean, not "/"
//	outbound_hosts = ["api.opensubtitles.com:443"]  # host:port; "*.example.com:443" allowed
//
//	[settings.global]               # optional: the server owner's settings (see Settings)
//	schema = "settings/global.json" # required: JSON Schema file, relative to the plugin directory
//	ui = "settings/global.ui.json"  # optional: JSON Forms UI schema file for layout
//
//	[settings.user]                 # optional: each user's own settings
//	schema = "settings/user.json"
//
// Keys are case-sensitive and unknown keys are errors, so a typo never
// silently drops a setting. Parse reports every problem it finds, one per
// line, each naming the file and the field:
//
//	plugin.toml: hooks[1].phase: "requets" is not a phase (want request, response, route or observe)
//
// # Defaults and rules
//
// A hook's failure policy says what the host does when the plugin misses its
// deadline or fails: fail-open carries on as if the hook were not there,
// fail-closed fails the request. It defaults to fail-open, except for
// route hooks (a plugin that replaces a route), which default to fail-closed.
// Observe hooks and observe streams only watch traffic and must be
// fail-open. Two route hooks of one plugin may not claim overlapping
// method and route, because a route has one owner.
//
// Sizes are integer bytes or strings with a unit: B, KiB, MiB, GiB, TiB
// (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. "64MiB".
// Durations use Go's syntax, e.g. "50ms", "1.5s".
//
// # Settings
//
// A plugin declares its settings per scope: global (the server owner's,
// one set) and user (each user's own). Each scope names a JSON Schema
// file, draft 2020-12 unless the file's "$schema" says otherwise, of an
// object whose properties are the settings; "default" gives a setting's
// value when none is stored, "description" explains it, and
// "writeOnly": true marks a secret, which the daemon never shows back in
// full. An optional JSON Forms UI schema lays out the form. Paths are
// relative to the plugin directory, slash-separated and clean: no "..",
// no "./" or "//", not absolute. This package checks only the paths; the
// daemon reads and compiles the files when the plugin is installed and
// refuses the install if a schema does not compile.
//
// # Route templates
//
// Routes use axum's template syntax, the one Dim's router uses: a template
// starts with "/" and its segments are literals, ":param" (exactly one
// non-empty path segment) or, as the last segment only, "*rest" (the
// non-empty remainder of the path, slashes included, without its leading
// slash). Parameter names are unique within a template. Templates have no
// empty segments, so "/api/v1/media/" (trailing slash) is not a template.
// See ParseRoute, Route.Match and Route.Overlaps.
package manifest
