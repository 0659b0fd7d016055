package dimplug

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"aead.dev/minisign"
)

func testDir(t testing.TB) string {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	write("plugin.toml", "name = \"demo\"\nversion = \"1.2.3\"\nentrypoint = \"demo\"\n", 0o644)
	write("demo", "#!/bin/sh\n", 0o755)
	write("assets/a.txt", "a", 0o644)
	write("assets/z/b.txt", "b", 0o600)
	return dir
}

// TestPackRoundTrip packs twice (byte-identical), reads the head, verifies
// the signature and checks every entry against the manifest.
func TestPackRoundTrip(t *testing.T) {
	dir := testDir(t)
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	m, err := Pack(&a, dir, PackOptions{Key: &priv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Pack(&b, dir, PackOptions{Key: &priv}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("Pack is not deterministic")
	}
	if m.Name != "demo" || m.Version != "1.2.3" || len(m.Files) != 4 || len(m.Dirs) != 2 {
		t.Fatalf("manifest: %+v", m)
	}
	if !IsPackage(a.Bytes()) {
		t.Fatal("not recognised as a package")
	}
	head, err := ReadHead(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(head.PluginTOML, []byte(`name = "demo"`)) {
		t.Fatalf("plugin.toml: %q", head.PluginTOML)
	}
	if k, err := head.Verify([]minisign.PublicKey{pub}); err != nil || k.ID() != pub.ID() {
		t.Fatalf("verify: %v", err)
	}
	if head.SignatureKeyID() != KeyID(pub.ID()) {
		t.Fatalf("key id %s, want %s", head.SignatureKeyID(), KeyID(pub.ID()))
	}
	other, _, _ := minisign.GenerateKey(rand.Reader)
	if _, err := head.Verify([]minisign.PublicKey{other}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("verify with another key: %v", err)
	}

	// Every entry checks out, in order.
	zr, _ := NewReader(bytes.NewReader(a.Bytes()))
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, next, err := ReadHeader(tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(h.Manifest)
	var names []string
	for hdr := next; hdr != nil; {
		names = append(names, hdr.Name)
		if hdr.ModTime.Unix() != 0 || hdr.Uid != 0 || hdr.Uname != "" {
			t.Fatalf("%s: not normalized: %+v", hdr.Name, hdr)
		}
		if hdr.Typeflag == tar.TypeDir {
			if err := v.Dir(filepath.Clean(hdr.Name)); err != nil {
				t.Fatal(err)
			}
		} else {
			w, err := v.File(hdr.Name, hdr.Size, hdr.Mode&0o111 != 0)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(w, tr)
			if err := v.Done(); err != nil {
				t.Fatal(err)
			}
		}
		if hdr, err = tr.Next(); err == io.EOF {
			break
		}
	}
	if err := v.End(); err != nil {
		t.Fatal(err)
	}
	want := []string{"plugin.toml", "assets/", "assets/a.txt", "assets/z/", "assets/z/b.txt", "demo"}
	if len(names) != len(want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %q, want %q", names, want)
		}
	}
}

// TestPackRefusesSymlinks: only directories and regular files are packed.
func TestPackRefusesSymlinks(t *testing.T) {
	dir := testDir(t)
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	if _, err := Pack(io.Discard, dir, PackOptions{}); err == nil {
		t.Fatal("packed a symbolic link")
	}
}

// TestParseManifestRefuses: hostile manifests are refused.
func TestParseManifestRefuses(t *testing.T) {
	for _, m := range []string{
		`{"format":2,"name":"x","version":"1","dirs":[],"files":[]}`,
		`{"format":1,"name":"x","version":"1","dirs":["../up"],"files":[]}`,
		`{"format":1,"name":"x","version":"1","dirs":[],"files":[{"path":"/abs","size":1,"mode":"0644","sha256":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}]}`,
		`{"format":1,"name":"x","version":"1","dirs":[],"files":[{"path":"a/../b","size":1,"mode":"0644","sha256":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}]}`,
		`{"format":1,"name":"x","version":"1","dirs":[],"files":[{"path":"a","size":1,"mode":"4755","sha256":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}]}`,
		`{"format":1,"name":"x","version":"1","dirs":["a"],"files":[{"path":"a","size":1,"mode":"0644","sha256":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}]}`,
		`{"format":1,"name":"x","version":"1","dirs":[],"files":[],"extra":1}`,
	} {
		if _, err := ParseManifest([]byte(m)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", m, err)
		}
	}
}
