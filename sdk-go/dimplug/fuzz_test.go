package dimplug

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzReadHeader feeds hostile tar streams to the header reader (the
// manifest, the signature, ParseManifest's checks): it never panics,
// refuses as ErrInvalid, and what it accepts is a manifest ParseManifest
// accepts as read, with only clean, relative, distinct paths.
func FuzzReadHeader(f *testing.F) {
	var pkg bytes.Buffer
	if _, err := Pack(&pkg, testDir(f), PackOptions{}); err != nil {
		f.Fatal(err)
	}
	zr, err := NewReader(&pkg)
	if err != nil {
		f.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	zr.Close()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(plain)
	f.Add([]byte(`{"format":1,"name":"x","version":"1","dirs":["a","a/../b"],"files":[{"path":"a/b","size":1,"mode":"0644","sha256":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}]}`))

	f.Fuzz(func(t *testing.T, b []byte) {
		tr := tar.NewReader(bytes.NewReader(b))
		h, _, err := ReadHeader(tr, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refused with an error that is not ErrInvalid: %v", err)
			}
			// The bytes as a bare manifest: the same rules.
			if m, err := ParseManifest(b); err == nil {
				checkAccepted(t, m)
			} else if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseManifest refused with an error that is not ErrInvalid: %v", err)
			}
			return
		}
		m, err := ParseManifest(h.ManifestBytes)
		if err != nil || !reflect.DeepEqual(m, h.Manifest) {
			t.Fatalf("ReadHeader accepted a manifest ParseManifest reads as %+v, %v", m, err)
		}
		checkAccepted(t, h.Manifest)
	})
}

// checkAccepted holds an accepted manifest to what extraction relies on.
func checkAccepted(t *testing.T, m *Manifest) {
	t.Helper()
	seen := map[string]bool{}
	for _, p := range m.Dirs {
		if err := checkPath(p); err != nil || seen[p] {
			t.Fatalf("accepted directory %q (%v, seen %v)", p, err, seen[p])
		}
		seen[p] = true
	}
	for _, fl := range m.Files {
		if err := checkPath(fl.Path); err != nil || seen[fl.Path] || fl.Size < 0 {
			t.Fatalf("accepted file %+v (%v, seen %v)", fl, err, seen[fl.Path])
		}
		seen[fl.Path] = true
	}
}
