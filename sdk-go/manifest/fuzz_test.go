package manifest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that it returns exactly one of
// a manifest and an error, that every error line names the file, and that
// an accepted manifest survives the JSON round trip the daemon relies on.
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
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "plugin.toml: ") {
					t.Fatalf("error line %q does not name the file", line)
				}
			}
			return
		}
		for _, h := range m.Hooks {
			if _, err := ParseRoute(h.Route); err != nil {
				t.Fatalf("accepted hook route %q: %v", h.Route, err)
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal accepted manifest: %v", err)
		}
		var back Manifest
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal accepted manifest: %v\n%s", err, b)
		}
	})
}

// FuzzRoute checks that parsing and matching never panic and that a
// matching path's parameters reassemble consistently.
func FuzzRoute(f *testing.F) {
	f.Add("/api/v1/stream/:gid/data/*path", "/api/v1/stream/1/data/a/b")
	f.Add("/api/v1/media/:id", "/api/v1/media/1")
	f.Add("/", "/")
	f.Add("/*p", "//")
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
