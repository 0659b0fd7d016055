package layout

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestPackageDocs: every package of the main module has a package comment
// saying what it owns.
func TestPackageDocs(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "github.com/dimplugd/dimplugd/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for {
		var p struct{ ImportPath, Doc string }
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
		if p.Doc == "" {
			t.Errorf("package %s has no package comment saying what it owns", p.ImportPath)
		}
	}
	if n < 20 {
		t.Fatalf("go list found %d packages", n)
	}
}

// TestSDKIsItsOwnModule: the SDK's packages come from the sdk-go module
// (replaced by the checkout), not from the main module.
func TestSDKIsItsOwnModule(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.Module.Path}} {{.Module.Dir}}", "github.com/dimplugd/dimplugd/sdk-go/plugin")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if f := strings.Fields(string(out)); len(f) != 2 || f[0] != "github.com/dimplugd/dimplugd/sdk-go" || !strings.HasSuffix(f[1], "/sdk-go") {
		t.Fatalf("sdk-go/plugin comes from module %q; want github.com/dimplugd/dimplugd/sdk-go in ./sdk-go", out)
	}
}
