package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// treeOf describes a directory: path → mode and content.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestArchiveRoundTrip(t *testing.T) {
	src := writePlugin(t, "shipped", "1.0.0", "")
	writeTestFile(t, filepath.Join(src, "deep", "er", "tool"), "#!/bin/sh\n", 0o700)
	writeTestFile(t, filepath.Join(src, strings.Repeat("long-name-", 12)), "long", 0o644)
	if err := os.Mkdir(filepath.Join(src, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	if err := WriteArchive(&plain, src); err != nil {
		t.Fatal(err)
	}
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	if _, err := zw.Write(plain.Bytes()); err != nil {
		t.Fatal(err)
	}
	zw.Close()

	for name, data := range map[string][]byte{"plain": plain.Bytes(), "gzip": zipped.Bytes()} {
		t.Run(name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			rec, err := s.InstallArchive(context.Background(), bytes.NewReader(data), InstallOptions{Enable: true})
			if err != nil {
				t.Fatal(err)
			}
			if rec.Name != "shipped" || !rec.Enabled {
				t.Errorf("record = %+v", rec)
			}
			// Same tree as a directory install.
			fromDir := install(t, openStore(t, t.TempDir()), src, InstallOptions{})
			got, want := treeOf(t, rec.Dir), treeOf(t, fromDir.Dir)
			if len(got) != len(want) {
				t.Errorf("archive install has %d entries, directory install %d:\n%v\n%v", len(got), len(want), got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: archive install %q, directory install %q", k, got[k], v)
				}
			}
			if got["deep/er/tool"] != "-rwxr-xr-x #!/bin/sh\n" {
				t.Errorf("exec bit not kept: %q", got["deep/er/tool"])
			}
		})
	}
}

func TestWriteArchiveIsDeterministic(t *testing.T) {
	src := writePlugin(t, "same", "1.0.0", "")
	var a, b bytes.Buffer
	if err := WriteArchive(&a, src); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(src, "run.sh"), later, later); err != nil {
		t.Fatal(err)
	}
	if err := WriteArchive(&b, src); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("archives of the same tree differ")
	}
}

func TestWriteArchiveRejectsWhatInstallRejects(t *testing.T) {
	src := writePlugin(t, "x", "1.0.0", "")
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "share", "passwd")); err != nil {
		t.Fatal(err)
	}
	err := WriteArchive(&bytes.Buffer{}, src)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `share/passwd: symbolic link to "/etc/passwd" points outside the plugin directory`) {
		t.Errorf("WriteArchive = %v", err)
	}
}

type entry struct {
	hdr  tar.Header
	body string
}

// archive builds a tar stream, starting with a valid plugin, then entries.
func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	base := []entry{
		{tar.Header{Name: "plugin.toml", Mode: 0o644}, "name = \"evil\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n"},
		{tar.Header{Name: "run", Mode: 0o755}, "#!/bin/sh\n"},
	}
	for _, e := range append(base, entries...) {
		h := e.hdr
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && int64(len(e.body)) == h.Size {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tw.Flush() // no Close: some cases leave an entry's body short
	return buf.Bytes()
}

func TestInstallArchiveRejects(t *testing.T) {
	dirs := make([]entry, MaxInstallFiles)
	for i := range dirs {
		dirs[i] = entry{hdr: tar.Header{Name: fmt.Sprintf("d/%d/", i), Typeflag: tar.TypeDir, Mode: 0o755}}
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"parent traversal", archive(t, entry{tar.Header{Name: "../x", Mode: 0o644}, "x"}),
			`archive entry "../x": path leaves the plugin directory ("..")`},
		{"inner traversal", archive(t, entry{tar.Header{Name: "a/../../x", Mode: 0o644}, "x"}),
			`archive entry "a/../../x": path leaves the plugin directory ("..")`},
		{"harmless-looking dotdot", archive(t, entry{tar.Header{Name: "a/../b", Mode: 0o644}, "x"}),
			`archive entry "a/../b": path leaves the plugin directory ("..")`},
		{"absolute", archive(t, entry{tar.Header{Name: "/etc/cron.d/x", Mode: 0o644}, "x"}),
			`archive entry "/etc/cron.d/x": absolute path; entries must be relative to the plugin directory`},
		{"symlink", archive(t, entry{tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, ""}),
			`archive entry "link": symbolic links are not allowed (it points to "/etc/passwd")`},
		{"hard link", archive(t, entry{tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "run"}, ""}),
			`archive entry "hard": hard links are not allowed (it links to "run")`},
		{"device", archive(t, entry{tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, ""}),
			`archive entry "null": device files are not allowed`},
		{"fifo", archive(t, entry{tar.Header{Name: "fifo", Typeflag: tar.TypeFifo}, ""}),
			`archive entry "fifo": named pipes are not allowed`},
		{"duplicate", archive(t, entry{tar.Header{Name: "./run", Mode: 0o755}, "again"}),
			`archive entry "./run": appears twice`},
		{"file as dir", archive(t, entry{tar.Header{Name: "run/x", Mode: 0o644}, "x"}),
			`archive entry "run/x": `},
		{"too large", archive(t, entry{tar.Header{Name: "huge", Mode: 0o644, Size: MaxInstallSize + 1}, ""}),
			"huge: the plugin is larger than the 512 MiB limit"},
		{"too many entries", archive(t, dirs...),
			"the plugin has more than 10000 files and directories"},
		{"truncated", archive(t, entry{tar.Header{Name: "short", Mode: 0o644, Size: 100}, ""}),
			`archive entry "short": `},
		{"not an archive", []byte("this is not a tar file, not at all, and it is long enough to look at........................................................................................................................................................................................................................................................................................................................................................................................................................................................................................."),
			"read archive: "},
		{"corrupt gzip", []byte{0x1f, 0x8b, 0, 1, 2, 3}, "read archive: "},
		{"empty", nil, "invalid plugin: no plugin.toml in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			_, err := s.InstallArchive(context.Background(), bytes.NewReader(tt.data), InstallOptions{})
			if err == nil {
				t.Fatal("install succeeded")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.HasPrefix(err.Error(), "install plugin from archive: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to contain\n%s", err, tt.want)
			}
			assertClean(t, s)
			if _, err := os.Stat(filepath.Join(s.dir, "..", "x")); err == nil {
				t.Error("traversal wrote outside the state directory")
			}
		})
	}
}

func TestInstallArchiveAcceptsDotPrefixes(t *testing.T) {
	data := archive(t,
		entry{tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, ""},
		entry{tar.Header{Name: "./lib/", Typeflag: tar.TypeDir, Mode: 0o700}, ""},
		entry{tar.Header{Name: "./lib/x.so", Mode: 0o600}, "elf"},
		entry{tar.Header{Name: "implicit/dir/file", Mode: 0o644}, "x"},
		entry{tar.Header{Name: "pax_global_header", Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "x"}}, ""},
	)
	s := openStore(t, t.TempDir())
	rec, err := s.InstallArchive(context.Background(), bytes.NewReader(data), InstallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := treeOf(t, rec.Dir)
	for k, v := range map[string]string{
		"lib":               "drwxr-xr-x",
		"lib/x.so":          "-rw-r--r-- elf",
		"implicit/dir":      "drwxr-xr-x",
		"implicit/dir/file": "-rw-r--r-- x",
		"run":               "-rwxr-xr-x #!/bin/sh\n",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}
