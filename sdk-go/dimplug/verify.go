package dimplug

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"slices"
)

// Verifier checks a package's entries against its manifest while they are
// extracted: every entry must be listed, once, with the listed size and
// mode, every file's bytes must hash to the listed SHA-256, and at the end
// nothing listed may be missing. Its errors wrap ErrInvalid and name the
// entry.
type Verifier struct {
	m     *Manifest
	files map[string]File
	dirs  map[string]bool
	seen  map[string]bool
	cur   string
	h     hash.Hash
}

// NewVerifier checks entries against m.
func NewVerifier(m *Manifest) *Verifier {
	v := &Verifier{m: m, files: map[string]File{}, dirs: map[string]bool{}, seen: map[string]bool{}, h: sha256.New()}
	for _, f := range m.Files {
		v.files[f.Path] = f
	}
	for _, d := range m.Dirs {
		v.dirs[d] = true
	}
	return v
}

// Dir checks a directory entry (its cleaned path).
func (v *Verifier) Dir(name string) error {
	if !v.dirs[name] {
		return invalidf("archive entry %q: a directory the manifest does not list", name)
	}
	if v.seen[name] {
		return invalidf("archive entry %q: appears twice", name)
	}
	v.seen[name] = true
	return nil
}

// File checks a regular file's header (cleaned path, size, executable)
// and returns the writer its bytes must go through; call Done after.
func (v *Verifier) File(name string, size int64, executable bool) (io.Writer, error) {
	f, ok := v.files[name]
	switch {
	case !ok:
		return nil, invalidf("archive entry %q: a file the manifest does not list", name)
	case v.seen[name]:
		return nil, invalidf("archive entry %q: appears twice", name)
	case f.Size != size:
		return nil, invalidf("archive entry %q: %d bytes, the manifest says %d", name, size, f.Size)
	case f.Mode != ModeOf(executable):
		return nil, invalidf("archive entry %q: mode differs from the manifest's %s", name, f.Mode)
	}
	v.seen[name] = true
	v.cur = name
	v.h.Reset()
	return v.h, nil
}

// Done checks the hash of the file last passed to File.
func (v *Verifier) Done() error {
	f := v.files[v.cur]
	if got := hex.EncodeToString(v.h.Sum(nil)); got != f.SHA256 {
		return invalidf("archive entry %q: SHA-256 %s does not match the manifest's %s (the file was changed after packing)", v.cur, got, f.SHA256)
	}
	return nil
}

// End reports what the manifest lists and the archive did not hold.
func (v *Verifier) End() error {
	var missing []string
	for p := range v.files {
		if !v.seen[p] {
			missing = append(missing, p)
		}
	}
	for p := range v.dirs {
		if !v.seen[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return invalidf("the manifest lists %q, which the archive does not hold", missing)
	}
	return nil
}
