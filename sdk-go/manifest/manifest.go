package manifest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// FileName is the manifest's file name inside a plugin directory.
const FileName = "plugin.toml"

// MaxFileSize bounds a manifest file; Parse and Load reject larger input.
const MaxFileSize = 1 << 20

// Defaults applied by Parse when the manifest leaves a field out.
const (
	DefaultHookDeadline   = 250 * time.Millisecond
	DefaultStreamDeadline = time.Second
	// MaxDeadline bounds every hook and stream deadline.
	MaxDeadline = 60 * time.Second
)

// Manifest is a parsed and validated plugin.toml. Values returned by Parse
// and Load have every default applied. A Manifest is plain data; the JSON
// form (snake_case keys) is what the daemon persists.
type Manifest struct {
	// Name identifies the plugin: ^[a-z][a-z0-9-]{0,39}$. Required.
	Name string `json:"name" toml:"name"`
	// Version is the plugin's semantic version (MAJOR.MINOR.PATCH with
	// optional -prerelease and +build). Required.
	Version string `json:"version" toml:"version"`
	// Description is one line for operators. Optional.
	Description string `json:"description,omitempty" toml:"description,omitempty"`
	// Entrypoint is the executable, relative to the plugin directory, with
	// no ".." elements. Required.
	Entrypoint string `json:"entrypoint" toml:"entrypoint"`
	// Args are passed to the entrypoint. Optional.
	Args []string `json:"args,omitempty" toml:"args,omitempty"`
	// API is the range of protocol versions the plugin speaks. Defaults to
	// 1–1.
	API VersionRange `json:"api" toml:"api"`
	// Hooks are the REST hooks the plugin serves, in manifest order.
	Hooks []Hook `json:"hooks,omitempty" toml:"hooks,omitempty"`
	// Streams are the frame-stream stages the plugin serves.
	Streams []Stream `json:"streams,omitempty" toml:"streams,omitempty"`
	// Permissions are what the plugin asks the operator for.
	Permissions Permissions `json:"permissions" toml:"permissions"`
	// Settings declares the plugin's settings schemas, per scope. Left out
	// of the JSON form when the manifest declares none.
	Settings Settings `json:"settings,omitzero" toml:"settings,omitempty"`
	// UI is what the plugin adds to a host's web UI (pages in slots).
	UI UI `json:"ui,omitzero" toml:"ui,omitempty"`
}

// VersionRange is an inclusive range of protocol versions.
type VersionRange struct {
	Min uint16 `json:"min" toml:"min"`
	Max uint16 `json:"max" toml:"max"`
}

// Contains reports whether v lies within the range.
func (r VersionRange) Contains(v uint16) bool { return r.Min <= v && v <= r.Max }

// String returns "1" for a single version and "1–3" for a range.
func (r VersionRange) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(int(r.Min))
	}
	return fmt.Sprintf("%d–%d", r.Min, r.Max)
}

// Phase says where in a host request a hook runs.
type Phase string

// The hook phases.
const (
	// PhaseRequest hooks run before the host's handler and may change or
	// answer the request.
	PhaseRequest Phase = "request"
	// PhaseResponse hooks run after the host's handler and may change the
	// response.
	PhaseResponse Phase = "response"
	// PhaseRoute hooks replace the host's handler: the plugin owns the
	// route.
	PhaseRoute Phase = "route"
	// PhaseObserve hooks see a copy of the exchange after the response is
	// sent and cannot change anything.
	PhaseObserve Phase = "observe"
)

func (p Phase) valid() bool {
	switch p {
	case PhaseRequest, PhaseResponse, PhaseRoute, PhaseObserve:
		return true
	}
	return false
}

// FailurePolicy says what the host does when a hook or stream stage fails or
// misses its deadline.
type FailurePolicy string

// The failure policies.
const (
	// FailOpen carries on as if the hook were not there.
	FailOpen FailurePolicy = "fail-open"
	// FailClosed fails the host request (or the stream).
	FailClosed FailurePolicy = "fail-closed"
)

func (f FailurePolicy) valid() bool { return f == FailOpen || f == FailClosed }

// StreamRole says what a stream stage does with frames.
type StreamRole string

// The stream roles.
const (
	// RoleTransform stages receive frames and pass on (possibly changed)
	// frames.
	RoleTransform StreamRole = "transform"
	// RoleObserve stages see frames and pass nothing on.
	RoleObserve StreamRole = "observe"
)

func (r StreamRole) valid() bool { return r == RoleTransform || r == RoleObserve }

// Hook is one REST hook: where it runs, which requests it sees, and its
// contract.
type Hook struct {
	// Name is unique among the plugin's hooks; same charset as a plugin
	// name. Required.
	Name string `json:"name" toml:"name"`
	// Phase is where the hook runs. Required.
	Phase Phase `json:"phase" toml:"phase"`
	// Method is an uppercase HTTP method or "*" for any. Required.
	Method string `json:"method" toml:"method"`
	// Route is a route template (see ParseRoute). Required.
	Route string `json:"route" toml:"route"`
	// Priority orders hooks of one phase: lower runs first, ties broken by
	// plugin name. Default 0.
	Priority int `json:"priority" toml:"priority"`
	// Deadline bounds one call. Default DefaultHookDeadline, at most
	// MaxDeadline.
	Deadline Duration `json:"deadline" toml:"deadline"`
	// Failure is the failure policy. Default fail-open, or fail-closed for
	// route hooks; observe hooks must be fail-open.
	Failure FailurePolicy `json:"failure" toml:"failure"`
}

// Stream is one frame-stream stage.
type Stream struct {
	// Name is unique among the plugin's streams. Required.
	Name string `json:"name" toml:"name"`
	// Kind is the frame type, "type/subtype" (e.g. "audio/segment").
	// Required.
	Kind string `json:"kind" toml:"kind"`
	// Role is what the stage does with frames. Required.
	Role StreamRole `json:"role" toml:"role"`
	// Priority orders stages: lower runs first. Default 0.
	Priority int `json:"priority" toml:"priority"`
	// Deadline bounds one frame. Default DefaultStreamDeadline, at most
	// MaxDeadline.
	Deadline Duration `json:"deadline" toml:"deadline"`
	// Failure is the failure policy. Default fail-open; observe stages
	// must be fail-open.
	Failure FailurePolicy `json:"failure" toml:"failure"`
}

// Duration is a time.Duration written as text in TOML and JSON ("50ms").
type Duration struct{ time.Duration }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, accepting Go duration
// syntax.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("%q is not a duration (want e.g. \"50ms\" or \"2s\")", text)
	}
	d.Duration = v
	return nil
}

// Load reads dir/plugin.toml, parses it, and checks that the entrypoint is an
// executable regular file inside dir (symbolic links are followed only while
// they stay inside dir). Errors name the file as "plugin.toml"; callers add
// the directory.
func Load(dir string) (*Manifest, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open plugin directory: %w", err)
	}
	defer root.Close()
	f, err := root.Open(FileName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no %s in %s: every plugin directory needs a manifest", FileName, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", FileName, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", FileName, err)
	}
	m, err := Parse(data, FileName)
	if err != nil {
		return nil, err
	}
	if err := checkEntrypoint(root, m.Entrypoint); err != nil {
		return nil, err
	}
	return m, nil
}

func checkEntrypoint(root *os.Root, ep string) error {
	fi, err := root.Stat(ep)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("entrypoint %q does not exist: build it first or fix entrypoint in %s", ep, FileName)
	case err != nil:
		if lfi, lerr := root.Lstat(ep); lerr == nil && lfi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("entrypoint %q is a symbolic link that leads outside the plugin directory: the plugin must contain its executable", ep)
		}
		return fmt.Errorf("entrypoint %q: %w", ep, err)
	case fi.IsDir():
		return fmt.Errorf("entrypoint %q is a directory: point entrypoint in %s at the executable", ep, FileName)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("entrypoint %q is not a regular file (mode %s)", ep, fi.Mode())
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("entrypoint %q is not executable: chmod +x it or build it first", ep)
	}
	return nil
}

// localPath reports whether p, relative and slash-separated, names a
// location inside its base directory: not absolute, not empty, no ".."
// element.
func localPath(p string) bool {
	if p == "" || filepath.IsAbs(p) {
		return false
	}
	for el := range strings.SplitSeq(p, "/") {
		if el == ".." {
			return false
		}
	}
	return true
}
