package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
)

// FuzzInstallArchive feeds hostile bytes to the install path a package
// takes (gzip/zstd, tar, the .dimplug header and manifest, entry checks,
// the expansion budget, the plugin manifest) and holds it to its promises:
// it never panics; a refused archive is refused as invalid and leaves
// nothing in staging/; an accepted one unpacked only regular files and
// directories, inside the plugin's directory, within the expansion bound.
func FuzzInstallArchive(f *testing.F) {
	src := f.TempDir()
	for name, content := range map[string]string{
		"plugin.toml":    "name = \"fz\"\nversion = \"1.0.0\"\nentrypoint = \"run.sh\"\n",
		"run.sh":         "#!/bin/sh\necho fz\n",
		"share/data.txt": "data\n",
	} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			f.Fatal(err)
		}
	}
	var pkg bytes.Buffer
	if _, err := dimplug.Pack(&pkg, src, dimplug.PackOptions{}); err != nil {
		f.Fatal(err)
	}
	f.Add(pkg.Bytes())
	var plain, gz bytes.Buffer
	tw := tar.NewWriter(&plain)
	if err := tw.AddFS(os.DirFS(src)); err != nil {
		f.Fatal(err)
	}
	tw.Close()
	f.Add(plain.Bytes())
	zw := gzip.NewWriter(&gz)
	zw.Write(plain.Bytes())
	zw.Close()
	f.Add(gz.Bytes())
	// A symlink and a path that leaves the directory.
	var evil bytes.Buffer
	tw = tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "plugin.toml", Mode: 0o644, Size: 3, Typeflag: tar.TypeReg})
	tw.Write([]byte("x=1"))
	tw.WriteHeader(&tar.Header{Name: "l", Linkname: "/etc", Typeflag: tar.TypeSymlink})
	tw.WriteHeader(&tar.Header{Name: "../x", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	f.Add(evil.Bytes())

	s, err := Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })

	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := s.InstallArchive(context.Background(), bytes.NewReader(b), InstallOptions{PackageSize: int64(len(b))})
		if left := readDir(t, filepath.Join(s.dir, stagingDir)); len(left) != 0 {
			t.Fatalf("staging/ holds %v after the install (%v)", left, err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("hostile archive refused with an error that is not ErrInvalid: %v", err)
			}
			return
		}
		defer func() {
			if err := s.Remove(rec.Name); err != nil {
				t.Fatal(err)
			}
		}()
		var total int64
		err = filepath.WalkDir(rec.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() && !d.IsDir() {
				t.Errorf("unpacked %s of type %v", p, d.Type())
			}
			if rel, rerr := filepath.Rel(rec.Dir, p); rerr != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("unpacked %s outside %s", p, rec.Dir)
			}
			if fi, err := d.Info(); err == nil && d.Type().IsRegular() {
				total += fi.Size()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if total > ExpansionFloor && total/MaxExpansion > int64(len(b)) {
			t.Fatalf("%d bytes of archive unpacked to %d bytes", len(b), total)
		}
	})
}
