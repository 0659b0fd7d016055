package manifest

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the package importable by plugin authors: the manifest
// format is shared by the SDK, the CLI and the daemon, so it must not pull
// in the daemon, the sandbox (libcontainer) or any other dimplugd package.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/dimplugd/dimplugd/") {
				t.Errorf("%s imports %s; the manifest package must not depend on other dimplugd packages", file, path)
			}
		}
	}
}
