package schema

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestLayout keeps the module's package rules: every package says what it
// owns, and what plugin authors and hosts import (sdk-go/...) pulls in
// neither the daemon, nor the sandbox, nor cobra or libcontainer.
func TestLayout(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "github.com/dimplugd/dimplugd/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	denied := map[string]string{
		"github.com/dimplugd/dimplugd/daemon":  "the SDK must not depend on the daemon",
		"github.com/dimplugd/dimplugd/sandbox": "the SDK must not depend on the sandbox",
		"github.com/spf13/cobra":               "cobra belongs to the commands",
		"github.com/opencontainers/runc":       "libcontainer belongs to the sandbox",
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath, Doc, Name string
			Deps                  []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Doc == "" {
			t.Errorf("package %s has no package comment saying what it owns", p.ImportPath)
		}
		if !strings.Contains(p.ImportPath, "/sdk-go/") {
			continue
		}
		for _, d := range p.Deps {
			for prefix, why := range denied {
				if d == prefix || strings.HasPrefix(d, prefix+"/") {
					t.Errorf("%s imports %s: %s", p.ImportPath, d, why)
				}
			}
		}
	}
}
