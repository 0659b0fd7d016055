package schema

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// apiSchemas are the API's schema files; go.capnp and c++.capnp are only
// the code generators' annotations they import.
var apiSchemas = []string{"control.capnp", "daemon.capnp", "host.capnp", "http.capnp", "lane.capnp", "plugin.capnp", "stream.capnp"}

// need returns the path of a tool, skipping the test when it is missing
// (failing it under CI=true, where make deps installs it).
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s is missing (make deps installs it): %v", tool, err)
		}
		t.Skipf("%s is missing: %v", tool, err)
	}
	return p
}

// TestCompileCxx compiles the schemas for C++ with nothing but the capnp
// tool and a copy of this directory (no -I, no Go module cache), checks the
// code lands in namespace dimplugd::schema, and builds every generated
// file with -DDEBUG=1: LogLevel's enumerants must not collide with the
// macros C++ programs commonly define.
func TestCompileCxx(t *testing.T) {
	capnp := need(t, "capnp")
	gxx := need(t, "g++")
	if _, err := os.Stat("/usr/include/capnp/generated-header-support.h"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and libcapnp-dev's headers are missing: %v", err)
		}
		t.Skipf("libcapnp-dev's headers are missing: %v", err)
	}

	// Only the .capnp files, in a fresh directory: nothing else to find.
	src := t.TempDir()
	files, err := filepath.Glob("../../schema/*.capnp")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < len(apiSchemas)+2 {
		t.Fatalf("found %d schema files in ../../schema", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	cmd := exec.Command(capnp, append([]string{"compile", "--no-standard-import", "-oc++:" + out}, apiSchemas...)...)
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("capnp compile -oc++ with only the schema directory: %v\n%s", err, b)
	}

	h, err := os.ReadFile(filepath.Join(out, "plugin.capnp.h"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"namespace dimplugd {\nnamespace schema {", "DEBUG_LEVEL,", "ERROR_LEVEL,"} {
		if !strings.Contains(string(h), want) {
			t.Errorf("plugin.capnp.h lacks %q", want)
		}
	}
	for _, f := range apiSchemas {
		cmd := exec.Command(gxx, "-std=c++14", "-DDEBUG=1", "-I", out, "-c", f+".c++", "-o", os.DevNull)
		cmd.Dir = out
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("g++ -DDEBUG=1 %s.c++: %v\n%.2000s", f, err, b)
		}
	}
}
