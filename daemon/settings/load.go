package settings

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// Set is the compiled settings of one plugin, per scope.
type Set struct {
	// Global and User are nil when the manifest does not declare them.
	Global, User *Scope
}

// Scope is one scope's settings: the compiled schema and the documents a
// settings form is drawn from.
type Scope struct {
	Schema *Schema
	// Doc is the schema file as the plugin ships it.
	Doc json.RawMessage
	// UI is the JSON Forms UI schema file, nil if the plugin has none.
	UI json.RawMessage
}

// Scope returns the scope named name (manifest.ScopeGlobal or
// manifest.ScopeUser), or nil if the plugin does not declare it or name
// is not a scope.
func (s *Set) Scope(name string) *Scope {
	if s == nil {
		return nil
	}
	switch name {
	case manifest.ScopeGlobal:
		return s.Global
	case manifest.ScopeUser:
		return s.User
	}
	return nil
}

// LoadDir compiles the settings schemas m declares, reading them and the
// UI schemas (which must be JSON objects) from the plugin directory dir.
// It refuses files outside dir, symbolic links that lead outside it
// included, files that are not regular, and files over MaxFileSize. It
// reports every problem, one per line, each naming its file; missing or
// refused files and schemas that do not compile are errdefs.ErrInvalid. A
// manifest without settings gives an empty Set.
func LoadDir(dir string, m manifest.Settings) (*Set, error) {
	set := &Set{}
	if m.IsZero() {
		return set, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open plugin directory: %w", err)
	}
	defer root.Close()
	var errs []error
	for _, name := range []string{manifest.ScopeGlobal, manifest.ScopeUser} {
		decl := m.Scope(name)
		if decl == nil {
			continue
		}
		sc, err := loadScope(root, name, decl)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if name == manifest.ScopeGlobal {
			set.Global = sc
		} else {
			set.User = sc
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return set, nil
}

func loadScope(root *os.Root, name string, decl *manifest.SettingsScope) (*Scope, error) {
	key := "settings." + name
	doc, err := readFile(root, decl.Schema, key+".schema")
	if err != nil {
		return nil, err
	}
	sch, err := Compile(decl.Schema, doc)
	if err != nil {
		return nil, err
	}
	sc := &Scope{Schema: sch, Doc: json.RawMessage(doc)}
	if decl.UI == "" {
		return sc, nil
	}
	ui, err := readFile(root, decl.UI, key+".ui")
	if err != nil {
		return nil, err
	}
	v, err := decodeJSON(ui)
	if err != nil {
		return nil, invalidf("%s: not valid JSON: %v", decl.UI, err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, invalidf("%s: a UI schema must be a JSON object (a JSON Forms layout), got %s", decl.UI, jsonTypeName(v))
	}
	sc.UI = json.RawMessage(ui)
	return sc, nil
}

// readFile reads the regular file rel inside root; key is the manifest
// key that names it.
func readFile(root *os.Root, rel, key string) ([]byte, error) {
	if rel == "" {
		return nil, invalidf("%s in %s names no file", key, manifest.FileName)
	}
	// O_NONBLOCK: opening a FIFO must not hang; the mode check refuses it.
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, openError(root, rel, key, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	switch {
	case fi.IsDir():
		return nil, invalidf("%s: is a directory; %s in %s must name a JSON file", rel, key, manifest.FileName)
	case !fi.Mode().IsRegular():
		return nil, invalidf("%s: is not a regular file (mode %s)", rel, fi.Mode())
	case fi.Size() > MaxFileSize:
		return nil, invalidf("%s: is %d bytes, over the %d KiB limit", rel, fi.Size(), MaxFileSize>>10)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rel, err)
	}
	if len(data) > MaxFileSize {
		return nil, invalidf("%s: is over the %d KiB limit", rel, MaxFileSize>>10)
	}
	return data, nil
}

func openError(root *os.Root, rel, key string, err error) error {
	if !filepath.IsLocal(rel) {
		return invalidf("%s: is outside the plugin directory (named by %s in %s)", rel, key, manifest.FileName)
	}
	if lfi, lerr := root.Lstat(rel); lerr == nil && lfi.Mode()&fs.ModeSymlink != 0 && !errors.Is(err, fs.ErrNotExist) {
		return invalidf("%s: is a symbolic link that leads outside the plugin directory: the plugin must contain its settings schemas", rel)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return invalidf("%s: does not exist in the plugin directory (named by %s in %s)", rel, key, manifest.FileName)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Err != nil && pe.Err.Error() == "path escapes from parent" {
		return invalidf("%s: leads outside the plugin directory (through a symbolic link): the plugin must contain its settings schemas", rel)
	}
	return fmt.Errorf("open %s: %w", rel, err)
}
