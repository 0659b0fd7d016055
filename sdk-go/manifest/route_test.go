package manifest

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseRouteErrors(t *testing.T) {
	tests := []struct{ template, want string }{
		{"", `route "": is empty`},
		{"api/v1", `route "api/v1": must start with "/"`},
		{"/a//b", `has an empty segment ("//")`},
		{"/a/", "ends with a slash"},
		{"/a/:", `has ":" without a parameter name; write e.g. ":id"`},
		{"/a/*", `has "*" without a parameter name; write e.g. "*id"`},
		{"/a/:1d", `has an invalid parameter name "1d"`},
		{"/a/:id-x", `has an invalid parameter name "id-x"`},
		{"/:id/b/:id", `repeats parameter "id"`},
		{"/:id/*id", `repeats parameter "id"`},
		{"/*rest/more", `has "*rest" before the last segment`},
		{"/a/{id}", `uses braces in segment "{id}"`},
		{"/a/../b", `has a ".." segment`},
		{"/a/./b", `has a "." segment`},
		{"/a:b", `has ":" inside segment "a:b"`},
		{"/a*b", `has "*" inside segment "a*b"`},
		{"/a b", `has " " in segment "a b"`},
		{"/a?x=1", `has "?" in segment "a?x=1"`},
		{"/caf\u00e9", `has "\xc3" in segment`},
		{"/a%2", `has a % not followed by two hex digits in segment "a%2"`},
		{"/a%zz", `has a % not followed by two hex digits`},
		{"/" + strings.Repeat("a", MaxRouteLen), "is longer than 1024 bytes"},
	}
	for _, tt := range tests {
		_, err := ParseRoute(tt.template)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseRoute(%q) error = %v, want it to contain %q", tt.template, err, tt.want)
		}
	}
}

func TestRouteMatch(t *testing.T) {
	type P = []Param
	tests := []struct {
		template, path string
		want           P // nil with ok
		ok             bool
	}{
		// Dim's templates.
		{"/api/v1/media/:id", "/api/v1/media/42", P{{"id", "42"}}, true},
		{"/api/v1/media/:id", "/api/v1/media/42/", nil, false},
		{"/api/v1/media/:id", "/api/v1/media/", nil, false},
		{"/api/v1/media/:id", "/api/v1/media", nil, false},
		{"/api/v1/media/:id", "/api/v1/media/42/files", nil, false},
		{"/api/v1/media/:id", "/api/v1/medium/42", nil, false},
		{"/api/v1/media/:id", "/api/v1/media/tmdb_search", P{{"id", "tmdb_search"}}, true},
		{"/api/v1/media/:id", "/api/v1/media/a%2Fb", P{{"id", "a%2Fb"}}, true},
		{"/api/v1/library/:id/media", "/api/v1/library/7/media", P{{"id", "7"}}, true},
		{"/api/v1/library/:id/media", "/api/v1/library/7/unmatched", nil, false},
		{"/api/v1/library/:id/media", "/api/v1/library//media", nil, false},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data/video/1/segment_3.m4s", P{{"gid", "9f"}, {"path", "video/1/segment_3.m4s"}}, true},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data/x", P{{"gid", "9f"}, {"path", "x"}}, true},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data/", nil, false},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data", nil, false},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data//x/", P{{"gid", "9f"}, {"path", "/x/"}}, true},
		// Literals and the root.
		{"/", "/", nil, true},
		{"/", "", nil, false},
		{"/", "/a", nil, false},
		{"/ws", "/ws", nil, true},
		{"/ws", "ws", nil, false},
		{"/ws", "/ws/", nil, false},
		{"/ws", "/wss", nil, false},
		{"/*path", "/", nil, false},
		{"/*path", "/static/app.js", P{{"path", "static/app.js"}}, true},
		{"/static/*path", "/static", nil, false},
		{"/a/:b/c/:d", "/a/1/c/2", P{{"b", "1"}, {"d", "2"}}, true},
		{"/a/:b/c/:d", "/a/1/x/2", nil, false},
	}
	for _, tt := range tests {
		r, err := ParseRoute(tt.template)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := r.Match(tt.path)
		if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q.Match(%q) = %v, %v; want %v, %v", tt.template, tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

func TestZeroRouteMatchesNothing(t *testing.T) {
	var r Route
	if _, ok := r.Match("/"); ok {
		t.Error("zero Route matched /")
	}
	root, _ := ParseRoute("/")
	if r.Overlaps(root) || root.Overlaps(r) {
		t.Error("zero Route overlaps /")
	}
}

func TestAppendMatchRestoresOnMiss(t *testing.T) {
	r, _ := ParseRoute("/a/:x/b")
	dst := []Param{{"keep", "me"}}
	got, ok := r.AppendMatch(dst, "/a/1/c")
	if ok || len(got) != 1 {
		t.Fatalf("AppendMatch = %v, %v", got, ok)
	}
	got, ok = r.AppendMatch(got, "/a/1/b")
	if !ok || !reflect.DeepEqual(got, []Param{{"keep", "me"}, {"x", "1"}}) {
		t.Fatalf("AppendMatch = %v, %v", got, ok)
	}
}

func TestRouteParams(t *testing.T) {
	r, _ := ParseRoute("/api/v1/stream/:gid/data/*path")
	if got := r.Params(); !reflect.DeepEqual(got, []string{"gid", "path"}) {
		t.Errorf("Params = %v", got)
	}
	if r.String() != "/api/v1/stream/:gid/data/*path" {
		t.Errorf("String = %q", r.String())
	}
}

func TestMatchAllocations(t *testing.T) {
	withParams, _ := ParseRoute("/api/v1/stream/:gid/data/*path")
	literal, _ := ParseRoute("/api/v1/dashboard")
	cases := []struct {
		name string
		r    Route
		path string
		want float64
	}{
		{"literal hit", literal, "/api/v1/dashboard", 0},
		{"literal miss", literal, "/api/v1/media/1", 0},
		{"params miss", withParams, "/api/v1/stream/1/manifest", 0},
		{"params hit", withParams, "/api/v1/stream/1/data/a/b", 1},
	}
	for _, c := range cases {
		got := testing.AllocsPerRun(100, func() { c.r.Match(c.path) })
		if got != c.want {
			t.Errorf("%s: %v allocations, want %v", c.name, got, c.want)
		}
	}
	buf := make([]Param, 0, 4)
	if got := testing.AllocsPerRun(100, func() { withParams.AppendMatch(buf[:0], "/api/v1/stream/1/data/a/b") }); got != 0 {
		t.Errorf("AppendMatch with room: %v allocations, want 0", got)
	}
}

func TestRouteOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"/api/v1/media/:id", "/api/v1/media/:mid", true},
		{"/api/v1/media/:id", "/api/v1/media/tmdb_search", true},
		{"/api/v1/media/:id", "/api/v1/media/:id/files", false},
		{"/api/v1/media/:id", "/api/v1/library/:id/media", false},
		{"/api/v1/library/:id/media", "/api/v1/library/:id/unmatched", false},
		{"/api/v1/library/:id/media", "/api/v1/:kind/:id/media", true},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/:id/manifest", false},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/:gid/data/:file", true},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/:gid/data", false},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/stream/:gid/data/*rest", true},
		{"/api/v1/stream/:gid/data/*path", "/api/v1/*rest", true},
		{"/api/v1/stream/:gid/data/*path", "/api/v2/*rest", false},
		{"/*path", "/", false},
		{"/*path", "/ws", true},
		{"/", "/", true},
		{"/", "/:id", false},
		{"/a/b", "/a/c", false},
		{"/a/b", "/a/b", true},
		{"/:x/b", "/a/:y", true},
		{"/images/*path", "/images/:dir/:file", true},
		{"/images/*path", "/image/:dir", false},
	}
	for _, tt := range tests {
		a, err := ParseRoute(tt.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseRoute(tt.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Overlaps(b); got != tt.want {
			t.Errorf("%q.Overlaps(%q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := b.Overlaps(a); got != tt.want {
			t.Errorf("%q.Overlaps(%q) = %v, want %v (not symmetric)", tt.b, tt.a, got, tt.want)
		}
	}
}

// TestRouteConformance runs the shared route cases every host implements
// (schema/conformance/routes.json; sdk-rust runs them too).
func TestRouteConformance(t *testing.T) {
	b, err := os.ReadFile("../../schema/conformance/routes.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Match []struct {
			Template, Path string
			Params         [][2]string
		}
		Methods []struct {
			Hook, Request string
			Match         bool
		}
		InvalidTemplates []string `json:"invalid_templates"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Match) < 20 || len(doc.Methods) < 5 || len(doc.InvalidTemplates) < 5 {
		t.Fatalf("routes.json has %d match, %d method and %d template cases", len(doc.Match), len(doc.Methods), len(doc.InvalidTemplates))
	}
	for _, c := range doc.Match {
		r, err := ParseRoute(c.Template)
		if err != nil {
			t.Fatalf("%q: %v", c.Template, err)
		}
		got, ok := r.Match(c.Path)
		if ok != (c.Params != nil) {
			t.Errorf("%q.Match(%q) = %v, want %v", c.Template, c.Path, ok, c.Params != nil)
			continue
		}
		if len(got) != len(c.Params) {
			t.Errorf("%q.Match(%q) = %v, want %v", c.Template, c.Path, got, c.Params)
			continue
		}
		for i, p := range got {
			if p.Name != c.Params[i][0] || p.Value != c.Params[i][1] {
				t.Errorf("%q.Match(%q) = %v, want %v", c.Template, c.Path, got, c.Params)
			}
		}
	}
	for _, c := range doc.Methods {
		if got := MethodMatches(c.Hook, c.Request); got != c.Match {
			t.Errorf("MethodMatches(%q, %q) = %v, want %v", c.Hook, c.Request, got, c.Match)
		}
	}
	for _, tmpl := range doc.InvalidTemplates {
		if _, err := ParseRoute(tmpl); err == nil {
			t.Errorf("ParseRoute(%q) accepted an invalid template", tmpl)
		}
	}
}
