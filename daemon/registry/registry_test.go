package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// writePlugin creates a plugin directory: a plugin.toml for name and
// version plus extra manifest text, an executable entrypoint script and a
// data file in a subdirectory.
func writePlugin(t *testing.T, name, version, extra string) string {
	t.Helper()
	dir := t.TempDir()
	m := fmt.Sprintf("name = %q\nversion = %q\nentrypoint = \"run.sh\"\n%s", name, version, extra)
	writeTestFile(t, filepath.Join(dir, manifest.FileName), m, 0o644)
	writeTestFile(t, filepath.Join(dir, "run.sh"), "#!/bin/sh\necho "+name+"\n", 0o755)
	writeTestFile(t, filepath.Join(dir, "share", "data.txt"), "data of "+name+"\n", 0o600)
	return dir
}

func writeTestFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func install(t *testing.T, s *Store, src string, opt InstallOptions) Record {
	t.Helper()
	rec, err := s.InstallDir(context.Background(), src, opt)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// assertClean checks that staging/ is empty and that plugins/ holds exactly
// the directories of installed plugins.
func assertClean(t *testing.T, s *Store) {
	t.Helper()
	if left := readDir(t, filepath.Join(s.dir, stagingDir)); len(left) != 0 {
		t.Errorf("staging/ holds %v, want nothing", left)
	}
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, r := range recs {
		want = append(want, filepath.Base(r.Dir))
	}
	// Directories the registry slated for deletion stay while a kept
	// backup may refer to them (see collectLocked); nothing else does.
	backups, err := listBackups(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var gc map[string]gcEntry
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
		_, gc, err = s.referenced(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for key, e := range gc {
		switch {
		case e.Why == gcInstall:
			t.Errorf("gc bucket holds the intent of an install in progress: %s", key)
		case len(backups) == 0 || e.Gen < backups[len(backups)-1].gen:
			t.Errorf("%s (%s) is slated, and no kept backup needs it, but it was not deleted", key, e.Why)
		default:
			want = append(want, strings.TrimPrefix(key, pluginsDir+"/"))
		}
	}
	sort.Strings(want)
	if got := readDir(t, filepath.Join(s.dir, pluginsDir)); !reflect.DeepEqual(got, want) {
		t.Errorf("plugins/ holds %v, want %v", got, want)
	}
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestInstallGetListEnableRemove(t *testing.T) {
	s := openStore(t, t.TempDir())
	src := writePlugin(t, "media-badge", "1.2.0", "[permissions]\nmemory = \"64MiB\"\n")
	if err := os.Symlink("share/data.txt", filepath.Join(src, "link.txt")); err != nil {
		t.Fatal(err)
	}
	rec := install(t, s, src, InstallOptions{})
	install(t, s, writePlugin(t, "another", "0.1.0", ""), InstallOptions{Enable: true})

	if rec.Name != "media-badge" || rec.Manifest.Version != "1.2.0" || rec.Enabled {
		t.Errorf("record = %+v", rec)
	}
	if rec.Grant.Memory != 64*manifest.MiB {
		t.Errorf("grant = %+v, want the manifest's permissions", rec.Grant)
	}
	if !filepath.IsAbs(rec.Dir) || filepath.Dir(rec.Dir) != filepath.Join(s.dir, pluginsDir) {
		t.Errorf("Dir = %s, want a directory in plugins/", rec.Dir)
	}
	if rec.InstalledAt.IsZero() || !rec.InstalledAt.Equal(rec.UpdatedAt) {
		t.Errorf("times = %v, %v", rec.InstalledAt, rec.UpdatedAt)
	}
	// Files: content and exec bits kept, modes normalized, the symbolic
	// link copied as a regular file.
	for name, want := range map[string]os.FileMode{"run.sh": 0o755, "share/data.txt": 0o644, "share": os.ModeDir | 0o755, "link.txt": 0o644, "plugin.toml": 0o644} {
		fi, err := os.Lstat(filepath.Join(rec.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(rec.Dir, "link.txt")); string(b) != "data of media-badge\n" {
		t.Errorf("link.txt = %q", b)
	}

	got, err := s.Get("media-badge")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, rec) {
		t.Errorf("Get =\n%+v\nwant\n%+v", got, rec)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "another" || list[1].Name != "media-badge" || !list[0].Enabled {
		t.Errorf("List = %+v", list)
	}

	on, err := s.SetEnabled("media-badge", true)
	if err != nil || !on.Enabled || !on.UpdatedAt.After(rec.UpdatedAt) && !on.UpdatedAt.Equal(rec.UpdatedAt) {
		t.Fatalf("SetEnabled = %+v, %v", on, err)
	}
	g := manifest.Permissions{Memory: 32 * manifest.MiB, ReadOnlyPaths: []string{"/srv/media"}}
	granted, err := s.SetGrant("media-badge", g)
	if err != nil || !reflect.DeepEqual(granted.Grant, g) || !granted.Enabled {
		t.Fatalf("SetGrant = %+v, %v", granted, err)
	}
	if got, _ := s.Get("media-badge"); !reflect.DeepEqual(got, granted) {
		t.Errorf("Get after SetGrant = %+v", got)
	}
	if _, err := s.SetGrant("media-badge", manifest.Permissions{Memory: 1}); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), `grant plugin "media-badge": memory: 1 B is below the minimum of 16 MiB`) {
		t.Errorf("SetGrant invalid = %v", err)
	}

	if err := s.Remove("media-badge"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rec.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("files still there after Remove: %v", err)
	}
	_, err = s.Get("media-badge")
	if !errors.Is(err, ErrNotFound) || err.Error() != `plugin "media-badge" is not installed` {
		t.Errorf("Get after Remove = %v", err)
	}
	for name, err := range map[string]error{
		"Remove":     s.Remove("media-badge"),
		"SetEnabled": second(s.SetEnabled("media-badge", true)),
		"SetGrant":   second(s.SetGrant("media-badge", manifest.Permissions{})),
	} {
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `plugin "media-badge" is not installed`) {
			t.Errorf("%s of a removed plugin = %v", name, err)
		}
	}
	assertClean(t, s)
}

func second[T any](_ T, err error) error { return err }

func TestPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := install(t, s, writePlugin(t, "keeper", "1.0.0", ""), InstallOptions{Enable: true})
	if err := s.KV("keeper").Set("greeting", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir)
	got, err := s.Get("keeper")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, rec) {
		t.Errorf("after reopen\n%+v\nwant\n%+v", got, rec)
	}
	if v, ok, err := s.KV("keeper").Get("greeting"); string(v) != "hello" || !ok || err != nil {
		t.Errorf("KV after reopen = %q, %v, %v", v, ok, err)
	}
	if _, err := os.Stat(filepath.Join(got.Dir, "run.sh")); err != nil {
		t.Error(err)
	}
	assertClean(t, s)
}

func TestStateDirectoryCanMove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	install(t, s, writePlugin(t, "mover", "1.0.0", ""), InstallOptions{})
	s.Close()
	moved := filepath.Join(filepath.Dir(dir), "b")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, moved)
	rec, err := s.Get("mover")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec.Dir, moved+string(filepath.Separator)) {
		t.Errorf("Dir = %s, want it under %s", rec.Dir, moved)
	}
	if _, err := os.Stat(filepath.Join(rec.Dir, "run.sh")); err != nil {
		t.Errorf("files were collected after the move: %v", err)
	}
}

func TestOpenCreatesPrivateDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "nested")
	openStore(t, dir)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, want 0700", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, dbFileName)); err != nil {
		t.Error(err)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	start := time.Now()
	s2, err := Open(dir)
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	want := fmt.Sprintf("state directory %s is in use by another dimplugd (stop it or pass a different --state-dir)", dir)
	if err.Error() != want {
		t.Errorf("error = %q\nwant %q", err, want)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %v", d)
	}
}

func TestGarbageCollectedOnOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := install(t, s, writePlugin(t, "kept", "1.0.0", ""), InstallOptions{})
	s.Close()

	// What a crash mid-install, mid-replace or mid-remove leaves behind.
	writeTestFile(t, filepath.Join(dir, stagingDir, "install-123", "plugin.toml"), "half", 0o644)
	writeTestFile(t, filepath.Join(dir, stagingDir, "stray-file"), "x", 0o644)
	writeTestFile(t, filepath.Join(dir, pluginsDir, "kept-0011223344556677", "run.sh"), "old", 0o755)
	writeTestFile(t, filepath.Join(dir, pluginsDir, "orphan-8899aabbccddeeff", "run.sh"), "x", 0o755)

	s = openStore(t, dir)
	assertClean(t, s)
	if _, err := os.Stat(filepath.Join(rec.Dir, "run.sh")); err != nil {
		t.Errorf("installed files were collected: %v", err)
	}
}

func TestReplaceKeepsDataAndEnabled(t *testing.T) {
	s := openStore(t, t.TempDir())
	v1 := install(t, s, writePlugin(t, "up", "1.0.0", ""), InstallOptions{Enable: true})
	if err := s.KV("up").Set("state", []byte("v1 data")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)

	src2 := writePlugin(t, "up", "2.0.0", "[permissions]\npids = 32\n")
	_, err := s.InstallDir(context.Background(), src2, InstallOptions{})
	if !errors.Is(err, ErrExists) || err.Error() != `install plugin "up" from `+src2+`: already installed (replace it to upgrade)` {
		t.Fatalf("install over without Replace = %v", err)
	}
	assertClean(t, s)

	v2 := install(t, s, src2, InstallOptions{Replace: true, Enable: false})
	if v2.Manifest.Version != "2.0.0" || !v2.Enabled || !v2.InstalledAt.Equal(v1.InstalledAt) || !v2.UpdatedAt.After(v1.UpdatedAt) {
		t.Errorf("replaced record = %+v", v2)
	}
	if !v2.Grant.IsZero() {
		t.Errorf("grant = %+v, want the old version's (a nil grant keeps it on replace)", v2.Grant)
	}
	if v2.Dir == v1.Dir {
		t.Error("replace reused the old directory")
	}
	g := manifest.Permissions{Pids: 32}
	v3 := install(t, s, src2, InstallOptions{Replace: true, Grant: &g})
	if v3.Grant.Pids != 32 {
		t.Errorf("grant = %+v, want the approved one", v3.Grant)
	}
	v1.Dir = v2.Dir // the v2 files were replaced in turn
	refuse := errors.New("asks for too much")
	_, err = s.InstallDir(context.Background(), src2, InstallOptions{Replace: true, Check: func(m *manifest.Manifest, prev *Record) error {
		if prev == nil || prev.Manifest.Version != "2.0.0" || m.Version != "2.0.0" {
			t.Errorf("Check got manifest %s and prev %+v", m.Version, prev)
		}
		return refuse
	}})
	if !errors.Is(err, refuse) {
		t.Fatalf("a failing Check: %v", err)
	}
	assertClean(t, s)
	// The replaced files stay while the backup taken before the replace
	// may be restored; they go once that backup is rotated out.
	if _, err := os.Stat(v1.Dir); err != nil {
		t.Errorf("old files gone while the backup before the replace is kept: %v", err)
	}
	for i := 0; i < DefaultKeepBackups; i++ {
		if err := s.KV("up").Set("rotate", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Backup(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(v1.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old files remain after every backup that knew them was rotated out: %v", err)
	}
	if v, ok, _ := s.KV("up").Get("state"); !ok || string(v) != "v1 data" {
		t.Errorf("KV after replace = %q, %v", v, ok)
	}
	assertClean(t, s)

	// Replace of a plugin that is not installed installs it fresh.
	fresh := install(t, s, writePlugin(t, "fresh", "1.0.0", ""), InstallOptions{Replace: true, Enable: true})
	if !fresh.Enabled {
		t.Errorf("fresh install via Replace = %+v", fresh)
	}
}

func TestInstallGrant(t *testing.T) {
	s := openStore(t, t.TempDir())
	src := writePlugin(t, "asks", "1.0.0", "[permissions]\nmemory = \"256MiB\"\n")
	g := manifest.Permissions{Memory: 128 * manifest.MiB}
	rec := install(t, s, src, InstallOptions{Grant: &g})
	if !reflect.DeepEqual(rec.Grant, g) {
		t.Errorf("grant = %+v, want %+v", rec.Grant, g)
	}
	_, err := s.InstallDir(context.Background(), src, InstallOptions{Replace: true, Grant: &manifest.Permissions{Pids: 1}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "pids: 1 is below the minimum of 16") {
		t.Errorf("invalid grant = %v", err)
	}
	assertClean(t, s)
}

// TestInstallFailuresLeaveNothing injects a failure at each step of an
// install and checks the error and that the state is as before.
func TestInstallFailuresLeaveNothing(t *testing.T) {
	tests := []struct {
		name      string
		src       func(t *testing.T) string
		failpoint string // fail at this point
		ctx       func() context.Context
		is        error
		named     string // the plugin name the error names, once known
		want      string
	}{
		{name: "invalid manifest", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			writeTestFile(t, filepath.Join(dir, manifest.FileName), "name = \"Bad\"\nversion = \"1\"\nentrypoint = \"run.sh\"\n", 0o644)
			return dir
		}, is: ErrInvalid, want: "invalid plugin:\n  plugin.toml: name: \"Bad\" is not a valid name (want 1 to 40 lowercase letters, digits or dashes, starting with a letter)\n  plugin.toml: version: \"1\" is not a semantic version"},
		{name: "no manifest", src: func(t *testing.T) string { return t.TempDir() }, is: ErrInvalid, want: "invalid plugin: no plugin.toml in"},
		{name: "entrypoint not executable", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			writeTestFile(t, filepath.Join(dir, "run.sh"), "#!/bin/sh\n", 0o644)
			return dir
		}, is: ErrInvalid, want: `invalid plugin: entrypoint "run.sh" is not executable: chmod +x it or build it first`},
		{name: "exists", src: func(t *testing.T) string { return writePlugin(t, "existing", "2.0.0", "") },
			is: ErrExists, named: "existing", want: "already installed (replace it to upgrade)"},
		{name: "unreadable file", src: func(t *testing.T) string { return writePlugin(t, "x", "1.0.0", "") },
			failpoint: "copy share/data.txt", want: "share/data.txt: injected failure"},
		{name: "commit fails", src: func(t *testing.T) string { return writePlugin(t, "x", "1.0.0", "") },
			failpoint: "commit", named: "x", want: "injected failure"},
		{name: "after staging", src: func(t *testing.T) string { return writePlugin(t, "x", "1.0.0", "") },
			failpoint: "staged", named: "x", want: "injected failure"},
		{name: "canceled", src: func(t *testing.T) string { return writePlugin(t, "x", "1.0.0", "") },
			ctx: func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			}, is: context.Canceled, want: "context canceled"},
		{name: "symlink outside", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			if err := os.Symlink("../../etc/passwd", filepath.Join(dir, "share", "passwd")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: `share/passwd: symbolic link to "../../etc/passwd" points outside the plugin directory`},
		{name: "absolute symlink", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: `passwd: symbolic link to "/etc/passwd" points outside the plugin directory`},
		{name: "dangling symlink", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			if err := os.Symlink("nothing", filepath.Join(dir, "dangling")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: `dangling: symbolic link to "nothing" points to nothing`},
		{name: "symlink to directory", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			if err := os.Symlink("share", filepath.Join(dir, "lib")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: `lib: symbolic link to "share" is not a link to a regular file`},
		{name: "named pipe", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: "fifo: is a named pipe; only regular files and directories can be installed"},
		{name: "too large", src: func(t *testing.T) string {
			dir := writePlugin(t, "x", "1.0.0", "")
			f, err := os.Create(filepath.Join(dir, "share", "huge.bin"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(MaxInstallSize + 1); err != nil { // sparse
				t.Fatal(err)
			}
			return dir
		}, is: ErrInvalid, want: "share/huge.bin: the plugin is larger than the 512 MiB limit"},
		{name: "missing source", src: func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") },
			want: "open plugin directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			before := install(t, s, writePlugin(t, "existing", "1.0.0", ""), InstallOptions{Enable: true})
			if tt.failpoint != "" {
				s.failpoint = func(point string) error {
					if point == tt.failpoint {
						return errors.New("injected failure")
					}
					return nil
				}
			}
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			src := tt.src(t)
			_, err := s.InstallDir(ctx, src, InstallOptions{})
			if err == nil {
				t.Fatal("install succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			prefix := "install plugin from " + src + ": "
			if tt.named != "" {
				prefix = fmt.Sprintf("install plugin %q from %s: ", tt.named, src)
			}
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error:\n%v\nwant it to start with %q and contain\n%s", err, prefix, tt.want)
			}
			s.failpoint = nil
			assertClean(t, s)
			if recs, _ := s.List(); len(recs) != 1 || !reflect.DeepEqual(recs[0], before) {
				t.Errorf("records changed: %+v", recs)
			}
			if _, err := os.Stat(filepath.Join(before.Dir, "run.sh")); err != nil {
				t.Errorf("installed plugin damaged: %v", err)
			}
		})
	}
}

func TestUnreadableFileWithoutRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files whatever their mode; TestInstallFailuresLeaveNothing injects the failure instead")
	}
	s := openStore(t, t.TempDir())
	src := writePlugin(t, "x", "1.0.0", "")
	writeTestFile(t, filepath.Join(src, "secret"), "x", 0o000)
	_, err := s.InstallDir(context.Background(), src, InstallOptions{})
	if err == nil || !strings.Contains(err.Error(), "secret") {
		t.Errorf("error = %v, want it to name the file", err)
	}
	assertClean(t, s)
}

func TestConcurrentInstallsOfOneName(t *testing.T) {
	s := openStore(t, t.TempDir())
	src := writePlugin(t, "race", "1.0.0", "")
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.InstallDir(context.Background(), src, InstallOptions{})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrExists):
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d installs succeeded, want 1", ok)
	}
	assertClean(t, s)
}
