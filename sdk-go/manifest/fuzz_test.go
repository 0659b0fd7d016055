package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that it returns exactly one of
// a manifest and an error, that it answers the same twice (errors in a
// stable order), that every error line names the file and carries no raw
// control character, and that an accepted manifest re-validates (names,
// routes, phases, policies, deadlines and permissions within the rules)
// and survives the JSON round trip the daemon relies on unchanged. Seeds:
// the golden inputs under testdata/parse and crashers under
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/parse/*.toml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("hooks = [{}, 1]\n[permissions]\ncpu = nan\n"))
	f.Add([]byte("[[hooks]]\n[[hooks.x]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data, "plugin.toml")
		if (m == nil) == (err == nil) {
			t.Fatalf("Parse returned manifest %v and error %v", m, err)
		}
		m2, err2 := Parse(data, "plugin.toml")
		if fmt.Sprint(err) != fmt.Sprint(err2) || !reflect.DeepEqual(m, m2) {
			t.Fatalf("Parse answered differently twice:\n%v\n%v", err, err2)
		}
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "plugin.toml: ") {
					t.Fatalf("error line %q does not name the file", line)
				}
				if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
					t.Fatalf("error line %q carries a raw control character", line)
				}
			}
			return
		}
		checkAccepted(t, m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal accepted manifest: %v", err)
		}
		var back Manifest
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal accepted manifest: %v\n%s", err, b)
		}
		if b2, err := json.Marshal(&back); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("manifest changed in the JSON round trip (%v):\n%s\n%s", err, b, b2)
		}
		checkAccepted(t, &back)
	})
}

// checkAccepted re-validates an accepted manifest field by field.
func checkAccepted(t *testing.T, m *Manifest) {
	t.Helper()
	if !namePattern.MatchString(m.Name) || !semver(m.Version) || m.Entrypoint == "" || entrypointProblem(m.Entrypoint) != "" {
		t.Fatalf("accepted name %q, version %q, entrypoint %q", m.Name, m.Version, m.Entrypoint)
	}
	if len(m.Description) > MaxDescriptionLen {
		t.Fatalf("accepted a description of %d bytes", len(m.Description))
	}
	if m.API.Min == 0 || m.API.Min > m.API.Max {
		t.Fatalf("accepted api range %v", m.API)
	}
	if err := m.Permissions.Validate(); err != nil {
		t.Fatalf("accepted permissions that do not validate: %v", err)
	}
	for _, sc := range []*SettingsScope{m.Settings.Global, m.Settings.User} {
		if sc != nil && (sc.Schema == "" || settingsPathProblem(sc.Schema) != "" || sc.UI != "" && settingsPathProblem(sc.UI) != "") {
			t.Fatalf("accepted settings files %+v", *sc)
		}
	}
	hooks := map[string]bool{}
	for _, h := range m.Hooks {
		if !namePattern.MatchString(h.Name) || hooks[h.Name] || !h.Phase.valid() || !h.Failure.valid() || methodProblem(h.Method) != "" {
			t.Fatalf("accepted hook %+v", h)
		}
		hooks[h.Name] = true
		if h.Deadline.Duration <= 0 || h.Deadline.Duration > MaxDeadline {
			t.Fatalf("accepted hook %q deadline %s", h.Name, h.Deadline)
		}
		if h.Phase == PhaseObserve && h.Failure != FailOpen {
			t.Fatalf("accepted fail-closed observe hook %q", h.Name)
		}
		if _, err := ParseRoute(h.Route); err != nil {
			t.Fatalf("accepted hook route %q: %v", h.Route, err)
		}
	}
	streams := map[string]bool{}
	for _, st := range m.Streams {
		if !namePattern.MatchString(st.Name) || streams[st.Name] || !st.Role.valid() || !st.Failure.valid() {
			t.Fatalf("accepted stream %+v", st)
		}
		streams[st.Name] = true
		if st.Deadline.Duration < 0 || st.Deadline.Duration > MaxDeadline {
			t.Fatalf("accepted stream %q deadline %s", st.Name, st.Deadline)
		}
		if st.Role == RoleObserve && st.Failure != FailOpen {
			t.Fatalf("accepted fail-closed observe stream %q", st.Name)
		}
	}
}

// FuzzRoute checks that parsing and matching never panic and that a
// matching path's parameters reassemble consistently.
func FuzzRoute(f *testing.F) {
	f.Add("/api/v1/stream/:gid/data/*path", "/api/v1/stream/1/data/a/b")
	f.Add("/api/v1/media/:id", "/api/v1/media/1")
	f.Add("/", "/")
	f.Add("/*p", "//")
	f.Add("/api/v1/library/:id/media", "/api/v1/library/3/media")
	f.Add("/api/v1/media/:id/files", "/api/v1/media/%2F/files")
	f.Add("/a/:x/b/*rest", "/a/1/b/")
	f.Fuzz(func(t *testing.T, template, path string) {
		r, err := ParseRoute(template)
		if err != nil {
			return
		}
		ps, ok := r.Match(path)
		if !ok {
			return
		}
		if len(ps) != len(r.Params()) {
			t.Fatalf("%q.Match(%q) = %v, want %d params", template, path, ps, len(r.Params()))
		}
		if !r.Overlaps(r) {
			t.Fatalf("%q does not overlap itself", template)
		}
		// A matched path, read as a literal template, overlaps the route.
		exact, _ := ParseRoute(path)
		if exact.template != "" && len(exact.Params()) == 0 && !r.Overlaps(exact) {
			t.Fatalf("%q matches %q but does not overlap it", template, path)
		}
	})
}
