package schema

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// deniedInSDK are modules and packages the SDK module must never pull in:
// what plugin authors and hosts build against stays small.
var deniedInSDK = map[string]string{
	"github.com/dimplugd/dimplugd/daemon":  "the SDK must not depend on the daemon",
	"github.com/dimplugd/dimplugd/sandbox": "the SDK must not depend on the sandbox",
	"github.com/spf13/cobra":               "cobra belongs to the commands",
	"github.com/opencontainers/runc":       "libcontainer belongs to the sandbox",
	"google.golang.org/grpc":               "gRPC belongs to the benchmarks' baselines",
	"github.com/hashicorp/go-plugin":       "go-plugin belongs to the benchmarks' baselines",
}

func denied(path string) string {
	for prefix, why := range deniedInSDK {
		if path == prefix || strings.HasPrefix(path, prefix+"/") {
			return why
		}
	}
	return ""
}

// TestLayout keeps the SDK module's rules: every package says what it
// owns, and no package imports the daemon, the sandbox, cobra, runc,
// gRPC or go-plugin.
func TestLayout(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = ".." // the SDK module's root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for {
		var p struct {
			ImportPath, Doc string
			Deps            []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
		if p.Doc == "" {
			t.Errorf("package %s has no package comment saying what it owns", p.ImportPath)
		}
		for _, d := range p.Deps {
			if why := denied(d); why != "" {
				t.Errorf("%s imports %s: %s", p.ImportPath, d, why)
			}
		}
	}
	if n < 8 {
		t.Fatalf("go list found %d packages in the SDK module", n)
	}
}

// TestOutsideModule is a plugin author outside this repository: a module
// in a temporary directory that requires the SDK (replaced by this
// checkout, as `go work` or a published version would provide it) builds a
// plugin, and its module graph holds none of the daemon's dependencies.
func TestOutsideModule(t *testing.T) {
	sdk, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/hello\n\ngo 1.25\n\nrequire github.com/dimplugd/dimplugd/sdk-go v0.0.0\n\nreplace github.com/dimplugd/dimplugd/sdk-go => "+sdk+"\n")
	write("main.go", `package main

import (
	"context"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type hello struct{}

func (hello) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	return nil, nil
}

func main() { _ = plugin.Serve(hello{}) }
`)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("mod", "tidy")
	run("build", "-o", filepath.Join(dir, "hello"), ".")
	mods := run("list", "-m", "all")
	for _, m := range strings.Split(strings.TrimSpace(mods), "\n") {
		if why := denied(strings.Fields(m)[0]); why != "" {
			t.Errorf("the plugin's module graph holds %s: %s", m, why)
		}
	}
	if !strings.Contains(mods, "capnproto.org/go/capnp/v3") {
		t.Errorf("go list -m all shows no capnp:\n%s", mods)
	}
	t.Logf("a plugin module outside the repository needs:\n%s", mods)
}
