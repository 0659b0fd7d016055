package registry

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// maintState is a closed state directory for the maintenance tests:
// alpha (enabled, with key-value data) is in both backups, beta only in
// the newer one, and the key "after" was set after the newer backup, as
// the last commit.
type maintState struct {
	dir          string
	older, newer string // backup/ files
	alphaDir     string // plugins/<alpha's directory>, relative
	alphaKeys    int
}

func newMaintState(t *testing.T) *maintState {
	t.Helper()
	m := &maintState{dir: t.TempDir(), alphaKeys: 50}
	s, err := Open(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := install(t, s, writePlugin(t, "alpha", "1.0.0", ""), InstallOptions{Enable: true})
	m.alphaDir, _ = filepath.Rel(m.dir, rec.Dir)
	for i := range m.alphaKeys {
		if err := s.KV("alpha").Set(fmt.Sprintf("key-%03d", i), maintValue(i)); err != nil {
			t.Fatal(err)
		}
	}
	if m.older, err = s.Backup(); err != nil {
		t.Fatal(err)
	}
	install(t, s, writePlugin(t, "beta", "2.0.0", ""), InstallOptions{})
	if m.newer, err = s.Backup(); err != nil {
		t.Fatal(err)
	}
	if err := s.KV("alpha").Set("after", []byte("the last commit")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return m
}

func maintValue(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 100+i) }

func (m *maintState) db() string { return filepath.Join(m.dir, dbFileName) }

func readBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// truncateHalf cuts the file at path to half its size, in whole pages.
func truncateHalf(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2/4096*4096); err != nil {
		t.Fatal(err)
	}
}

// damageNewestMeta flips a byte of the txid of the meta page holding the
// newest commit, so its checksum fails and only the older commit is left.
func damageNewestMeta(t *testing.T, path string) {
	t.Helper()
	ps, metas, err := readMetas(path)
	if err != nil {
		t.Fatal(err)
	}
	newest := 0
	if metas[1].txid > metas[0].txid {
		newest = 1
	}
	b := readBytes(t, path)
	b[newest*ps+pageHeaderSize+48] ^= 0x5a // txid
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// openNames opens dir and returns the names of its plugins, failing the
// test if Open refuses.
func openNames(t *testing.T, dir string) (*Store, []string) {
	t.Helper()
	s := openStore(t, dir)
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	return s, names
}

// TestCheckState checks state directories healthy and damaged in each way
// CheckState reports, and that it changes nothing.
func TestCheckState(t *testing.T) {
	for _, c := range []struct {
		name    string
		damage  func(t *testing.T, m *maintState)
		damaged bool
		check   func(t *testing.T, m *maintState, r *CheckReport)
	}{
		{
			name: "healthy",
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				if r.DB.Err != nil || r.DB.Plugins != 2 || r.DB.Txid == 0 || r.DB.Size <= 0 {
					t.Errorf("registry.db: %+v, want it good with 2 plugins", r.DB)
				}
				if len(r.Backups) != 2 || r.Backups[0].Path != m.newer || r.Backups[1].Path != m.older ||
					r.Backups[0].Plugins != 2 || r.Backups[1].Plugins != 1 {
					t.Errorf("backups: %+v, want the newer (2 plugins) then the older (1)", r.Backups)
				}
				if len(r.InUse) != 2 || !strings.Contains(strings.Join(r.InUse, " "), filepath.ToSlash(m.alphaDir)) {
					t.Errorf("in use: %v, want alpha's and beta's directories", r.InUse)
				}
				if r.Restore != "" || len(r.Missing)+len(r.Unreferenced)+len(r.Staging)+len(r.LostFound) != 0 {
					t.Errorf("report of a healthy directory: %+v", r)
				}
			},
		},
		{
			name:    "registry.db truncated",
			damage:  func(t *testing.T, m *maintState) { truncateHalf(t, m.db()) },
			damaged: true,
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				var d *DamageError
				if !errors.As(r.DB.Err, &d) || !strings.Contains(d.Problem, "truncated") {
					t.Errorf("registry.db error %v, want a DamageError saying it is truncated", r.DB.Err)
				}
				want := "`dimplugd state restore --state-dir " + m.dir + "` to go back to the last good backup (" + m.newer
				if !strings.HasPrefix(r.Restore, want) {
					t.Errorf("Restore = %q, want it to start with %q", r.Restore, want)
				}
				if len(r.Backups) != 2 || r.Backups[0].Err != nil {
					t.Errorf("backups: %+v, want two good ones", r.Backups)
				}
				if len(r.Unreferenced) != 2 {
					t.Errorf("plugins/ of an unreadable registry: %v, want both directories listed", r.Unreferenced)
				}
			},
		},
		{
			name:    "newest meta page damaged",
			damage:  func(t *testing.T, m *maintState) { damageNewestMeta(t, m.db()) },
			damaged: true,
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				var d *DamageError
				if !errors.As(r.DB.Err, &d) || !d.OlderIntact {
					t.Errorf("registry.db error %v, want a DamageError with the older commit intact", r.DB.Err)
				}
				if !strings.Contains(r.Restore, "--accept-older") {
					t.Errorf("Restore = %q, want it to offer --accept-older", r.Restore)
				}
			},
		},
		{
			name: "registry.db missing",
			damage: func(t *testing.T, m *maintState) {
				if err := os.Remove(m.db()); err != nil {
					t.Fatal(err)
				}
			},
			damaged: true,
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				if r.DB.Size != -1 || !errors.Is(r.DB.Err, ErrDamaged) || !strings.Contains(r.DB.Err.Error(), "is missing") {
					t.Errorf("registry.db: %+v, want it missing and refused", r.DB)
				}
				if !strings.Contains(r.Restore, "dimplugd state restore --state-dir") {
					t.Errorf("Restore = %q", r.Restore)
				}
			},
		},
		{
			name: "plugin files missing",
			damage: func(t *testing.T, m *maintState) {
				if err := os.RemoveAll(filepath.Join(m.dir, m.alphaDir)); err != nil {
					t.Fatal(err)
				}
			},
			damaged: true,
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				if r.DB.Err != nil || r.Restore != "" {
					t.Errorf("registry.db: %v, restore %q; want it good", r.DB.Err, r.Restore)
				}
				if want := []string{"alpha: " + filepath.ToSlash(m.alphaDir)}; !reflect.DeepEqual(r.Missing, want) {
					t.Errorf("Missing = %v, want %v", r.Missing, want)
				}
			},
		},
		{
			name:    "newer backup damaged",
			damage:  func(t *testing.T, m *maintState) { truncateHalf(t, m.newer) },
			damaged: true,
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				if r.DB.Err != nil || len(r.Backups) != 2 || !errors.Is(r.Backups[0].Err, ErrDamaged) || r.Backups[1].Err != nil {
					t.Errorf("registry.db %v, backups %+v; want only the newer backup damaged", r.DB.Err, r.Backups)
				}
			},
		},
		{
			name: "unreferenced directory and staging leftover",
			damage: func(t *testing.T, m *maintState) {
				for _, d := range []string{"plugins/stray-1234", "staging/left"} {
					if err := os.MkdirAll(filepath.Join(m.dir, d), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			},
			check: func(t *testing.T, m *maintState, r *CheckReport) {
				if !reflect.DeepEqual(r.Unreferenced, []string{"plugins/stray-1234"}) || !reflect.DeepEqual(r.Staging, []string{"left"}) {
					t.Errorf("unreferenced %v, staging %v", r.Unreferenced, r.Staging)
				}
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMaintState(t)
			if c.damage != nil {
				c.damage(t, m)
			}
			var before []byte
			if _, err := os.Stat(m.db()); err == nil {
				before = readBytes(t, m.db())
			}
			r, err := CheckState(m.dir)
			if err != nil {
				t.Fatal(err)
			}
			if r.StateDir != m.dir {
				t.Errorf("StateDir = %s, want %s", r.StateDir, m.dir)
			}
			if r.Damaged() != c.damaged {
				t.Errorf("Damaged() = %v, want %v: %+v", r.Damaged(), c.damaged, r)
			}
			c.check(t, m, r)
			if before != nil && !bytes.Equal(readBytes(t, m.db()), before) {
				t.Error("CheckState changed registry.db")
			}
		})
	}

	t.Run("new state directory", func(t *testing.T) {
		r, err := CheckState(t.TempDir())
		if err != nil || r.Damaged() || r.DB.Size != -1 || r.DB.Err != nil {
			t.Fatalf("CheckState = %+v, %v; want a new, undamaged directory", r, err)
		}
	})
	t.Run("no state directory", func(t *testing.T) {
		_, err := CheckState(filepath.Join(t.TempDir(), "nope"))
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("CheckState = %v, want ErrNotFound", err)
		}
	})
}

// TestRestoreState restores registry.db from the newest good backup, a
// file, or its older commit, and refuses what it must.
func TestRestoreState(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, m *maintState)
		opt    func(t *testing.T, m *maintState) RestoreOptions
		// from is the file restored (for "older", the rebuild).
		from      func(m *maintState) string
		plugins   []string
		kept      string // "damaged", "replaced" or "" (nothing kept)
		wantErr   error
		errSubstr string
	}{
		{
			name:    "newest good backup",
			damage:  func(t *testing.T, m *maintState) { truncateHalf(t, m.db()) },
			from:    func(m *maintState) string { return m.newer },
			plugins: []string{"alpha", "beta"},
			kept:    "damaged",
		},
		{
			name: "skips a damaged backup",
			damage: func(t *testing.T, m *maintState) {
				truncateHalf(t, m.db())
				truncateHalf(t, m.newer)
			},
			from:    func(m *maintState) string { return m.older },
			plugins: []string{"alpha"},
			kept:    "damaged",
		},
		{
			name: "from a kept file",
			damage: func(t *testing.T, m *maintState) {
				truncateHalf(t, m.db())
				kept := filepath.Join(t.TempDir(), "kept.db")
				if err := os.Rename(m.newer, kept); err != nil {
					t.Fatal(err)
				}
				m.newer = kept
				if err := os.Remove(m.older); err != nil {
					t.Fatal(err)
				}
			},
			opt:     func(t *testing.T, m *maintState) RestoreOptions { return RestoreOptions{From: m.newer} },
			from:    func(m *maintState) string { return m.newer },
			plugins: []string{"alpha", "beta"},
			kept:    "damaged",
		},
		{
			name:    "accept older after the newest meta page is damaged",
			damage:  func(t *testing.T, m *maintState) { damageNewestMeta(t, m.db()) },
			opt:     func(t *testing.T, m *maintState) RestoreOptions { return RestoreOptions{AcceptOlder: true} },
			from:    func(m *maintState) string { return "older commit of " + m.db() },
			plugins: []string{"alpha", "beta"},
			kept:    "damaged",
		},
		{
			name:      "accept older without an intact older commit",
			damage:    func(t *testing.T, m *maintState) { truncateHalf(t, m.db()) },
			opt:       func(t *testing.T, m *maintState) RestoreOptions { return RestoreOptions{AcceptOlder: true} },
			wantErr:   ErrNotFound,
			errSubstr: "no intact older commit",
		},
		{
			name: "no good backup",
			damage: func(t *testing.T, m *maintState) {
				truncateHalf(t, m.db())
				truncateHalf(t, m.newer)
				truncateHalf(t, m.older)
			},
			wantErr:   ErrNotFound,
			errSubstr: "--from FILE",
		},
		{
			name:      "healthy without force",
			wantErr:   errdefs.ErrConflict,
			errSubstr: "--force",
		},
		{
			name:    "healthy with force",
			opt:     func(t *testing.T, m *maintState) RestoreOptions { return RestoreOptions{Force: true} },
			from:    func(m *maintState) string { return m.newer },
			plugins: []string{"alpha", "beta"},
			kept:    "replaced",
		},
		{
			name: "missing registry.db",
			damage: func(t *testing.T, m *maintState) {
				if err := os.Remove(m.db()); err != nil {
					t.Fatal(err)
				}
			},
			from:    func(m *maintState) string { return m.newer },
			plugins: []string{"alpha", "beta"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMaintState(t)
			if c.damage != nil {
				c.damage(t, m)
			}
			var before []byte
			if _, err := os.Stat(m.db()); err == nil {
				before = readBytes(t, m.db())
			}
			var opt RestoreOptions
			if c.opt != nil {
				opt = c.opt(t, m)
			}
			res, err := RestoreState(m.dir, opt)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.errSubstr) {
					t.Fatalf("RestoreState = %v, want %v saying %q", err, c.wantErr, c.errSubstr)
				}
				if !bytes.Equal(readBytes(t, m.db()), before) {
					t.Error("a refused RestoreState changed registry.db")
				}
				if kept, _ := filepath.Glob(m.db() + ".*"); len(kept) != 0 {
					t.Errorf("a refused RestoreState kept %v", kept)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.From != c.from(m) {
				t.Errorf("From = %q, want %q", res.From, c.from(m))
			}
			switch c.kept {
			case "":
				if res.KeptAs != "" {
					t.Errorf("KeptAs = %q, want nothing kept", res.KeptAs)
				}
			default:
				if !strings.HasPrefix(res.KeptAs, m.db()+"."+c.kept+"-") {
					t.Errorf("KeptAs = %q, want %s.%s-<time>", res.KeptAs, m.db(), c.kept)
				} else if !bytes.Equal(readBytes(t, res.KeptAs), before) {
					t.Errorf("%s is not the previous registry.db", res.KeptAs)
				}
				if (res.Problem != "") != (c.kept == "damaged") {
					t.Errorf("Problem = %q with the previous file %s", res.Problem, c.kept)
				}
			}
			if r, err := CheckState(m.dir); err != nil || r.DB.Err != nil {
				t.Fatalf("CheckState after the restore: %v, registry.db %v", err, r.DB.Err)
			}
			s, names := openNames(t, m.dir)
			if !reflect.DeepEqual(names, c.plugins) {
				t.Fatalf("plugins after the restore: %v, want %v", names, c.plugins)
			}
			for i := range m.alphaKeys {
				v, ok, err := s.KV("alpha").Get(fmt.Sprintf("key-%03d", i))
				if err != nil || !ok || !bytes.Equal(v, maintValue(i)) {
					t.Fatalf("alpha's key-%03d after the restore: %d bytes, %v, %v", i, len(v), ok, err)
				}
			}
			// Every copy restored here predates the last commit.
			if _, ok, err := s.KV("alpha").Get("after"); err != nil || ok {
				t.Errorf("the key of the last commit is there (%v) after restoring a copy older than it", err)
			}
			rec, err := s.Get("alpha")
			if err != nil || !rec.Enabled {
				t.Errorf("alpha after the restore: %+v, %v; want it enabled", rec, err)
			} else if _, err := os.Stat(filepath.Join(rec.Dir, "run.sh")); err != nil {
				t.Errorf("alpha's files: %v", err)
			}
		})
	}
}

// TestCompactState reclaims the space of deleted key-value data, keeping
// everything else, and refuses a damaged database unchanged.
func TestCompactState(t *testing.T) {
	const values = 8 // of MaxValueLen: 8 MiB
	big := func(i int) []byte { return bytes.Repeat([]byte{byte('A' + i)}, MaxValueLen) }
	for _, c := range []struct {
		name string
		// free deletes some of beta's data from the open store.
		free func(t *testing.T, s *Store)
		// autoCompact is whether Open would have compacted the result.
		autoCompact bool
		// shrink: After must be at most Before/shrink.
		shrink  int64
		plugins []string
		// betaKeys are the keys of beta left.
		betaKeys []int
	}{
		{
			name: "plugin removed",
			free: func(t *testing.T, s *Store) {
				if err := s.Remove("beta"); err != nil {
					t.Fatal(err)
				}
			},
			autoCompact: true,
			shrink:      8,
			plugins:     []string{"alpha"},
		},
		{
			name: "keys deleted, below the threshold of Open",
			free: func(t *testing.T, s *Store) {
				if err := s.KV("beta").Delete("big-0"); err != nil {
					t.Fatal(err)
				}
			},
			shrink:   1, // smaller at all
			plugins:  []string{"alpha", "beta"},
			betaKeys: []int{1, 2, 3, 4, 5, 6, 7},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			install(t, s, writePlugin(t, "alpha", "1.0.0", ""), InstallOptions{Enable: true})
			install(t, s, writePlugin(t, "beta", "1.0.0", ""), InstallOptions{})
			for i := range 20 {
				if err := s.KV("alpha").Set(fmt.Sprintf("key-%02d", i), maintValue(i)); err != nil {
					t.Fatal(err)
				}
			}
			for i := range values {
				if err := s.KV("beta").Set(fmt.Sprintf("big-%d", i), big(i)); err != nil {
					t.Fatal(err)
				}
			}
			c.free(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, dbFileName)
			info, err := verifyFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := shouldCompact(info); got != c.autoCompact {
				t.Fatalf("the fixture is wrong: Open would compact it = %v, want %v (%d of %d pages free)", got, c.autoCompact, info.freePages, info.hwm)
			}
			size := fileSize(t, path)

			res, err := CompactState(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("compacted %s: %d → %d bytes (%d of %d pages were free)", res.Path, res.Before, res.After, info.freePages, info.hwm)
			if res.Path != path || res.Before != size || res.After != fileSize(t, path) {
				t.Errorf("Compacted = %+v, want %s, %d → its size now %d", res, path, size, fileSize(t, path))
			}
			if res.After*c.shrink >= res.Before {
				t.Errorf("After = %d, want under %d (Before %d / %d)", res.After, res.Before/c.shrink, res.Before, c.shrink)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, ".registry.db.*")); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}

			s, names := openNames(t, dir)
			if !reflect.DeepEqual(names, c.plugins) {
				t.Fatalf("plugins after compaction: %v, want %v", names, c.plugins)
			}
			if rec, err := s.Get("alpha"); err != nil || !rec.Enabled {
				t.Errorf("alpha after compaction: %+v, %v", rec, err)
			}
			for i := range 20 {
				v, ok, err := s.KV("alpha").Get(fmt.Sprintf("key-%02d", i))
				if err != nil || !ok || !bytes.Equal(v, maintValue(i)) {
					t.Fatalf("alpha's key-%02d after compaction: %d bytes, %v, %v", i, len(v), ok, err)
				}
			}
			for _, i := range c.betaKeys {
				v, ok, err := s.KV("beta").Get(fmt.Sprintf("big-%d", i))
				if err != nil || !ok || !bytes.Equal(v, big(i)) {
					t.Fatalf("beta's big-%d after compaction: %d bytes, %v, %v", i, len(v), ok, err)
				}
			}
			if c.betaKeys != nil {
				if _, ok, _ := s.KV("beta").Get("big-0"); ok {
					t.Error("a deleted key is back after compaction")
				}
			}
		})
	}

	t.Run("damaged", func(t *testing.T) {
		m := newMaintState(t)
		truncateHalf(t, m.db())
		before := readBytes(t, m.db())
		_, err := CompactState(m.dir)
		var d *DamageError
		if !errors.Is(err, ErrDamaged) || !errors.As(err, &d) {
			t.Fatalf("CompactState = %v, want a DamageError", err)
		}
		for _, want := range []string{"is damaged", "the file is unchanged", "dimplugd state restore --state-dir " + m.dir} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal lacks %q:\n%v", want, err)
			}
		}
		if !bytes.Equal(readBytes(t, m.db()), before) {
			t.Error("a refused CompactState changed registry.db")
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := CompactState(t.TempDir()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("CompactState of a new state directory = %v, want ErrNotFound", err)
		}
	})
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestMaintenanceRefusesWhileInUse: while a Store has the state directory
// open, every maintenance command fails with ErrInUse and changes nothing.
func TestMaintenanceRefusesWhileInUse(t *testing.T) {
	m := newMaintState(t)
	truncateHalf(t, m.newer) // a restore would otherwise have work to do
	s := openStore(t, m.dir)
	before := readBytes(t, m.db())
	for name, op := range map[string]func() error{
		"check":         func() error { _, err := CheckState(m.dir); return err },
		"restore":       func() error { _, err := RestoreState(m.dir, RestoreOptions{}); return err },
		"restore force": func() error { _, err := RestoreState(m.dir, RestoreOptions{Force: true}); return err },
		"compact":       func() error { _, err := CompactState(m.dir); return err },
	} {
		err := op()
		if !errors.Is(err, ErrInUse) || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "stop dimplugd first") {
			t.Errorf("%s = %v, want ErrInUse telling to stop dimplugd", name, err)
		}
	}
	if !bytes.Equal(readBytes(t, m.db()), before) {
		t.Error("registry.db changed while in use")
	}
	if kept, _ := filepath.Glob(m.db() + ".*"); len(kept) != 0 {
		t.Errorf("files kept while in use: %v", kept)
	}
	if _, err := s.List(); err != nil {
		t.Errorf("the open Store broke: %v", err)
	}
}

// TestOpenCompactsAfterRemove: the case. A plugin that filled its
// key-value store is removed; the next Open gives the space back without
// an operator's `state compact`, and keeps everything else.
func TestOpenCompactsAfterRemove(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	install(t, s, writePlugin(t, "keeper", "1.0.0", ""), InstallOptions{Enable: true})
	install(t, s, writePlugin(t, "filler", "1.0.0", ""), InstallOptions{})
	if err := s.KV("keeper").Set("k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 128 { // 8 MiB
		if err := s.KV("filler").Set(fmt.Sprintf("chunk-%03d", i), chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove("filler"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, dbFileName)
	before, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	after, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() > before.Size()/8 || after.Size() > 1<<20 {
		t.Errorf("registry.db is %d bytes after Open, %d before: not compacted", after.Size(), before.Size())
	}
	if v, ok, err := s.KV("keeper").Get("k"); err != nil || !ok || string(v) != "kept" {
		t.Errorf("keeper's data after compaction: %q, %v, %v", v, ok, err)
	}
	if _, err := s.Get("filler"); !errors.Is(err, ErrNotFound) {
		t.Errorf("filler after compaction: %v", err)
	}
	t.Logf("registry.db: %d bytes before Open, %d after", before.Size(), after.Size())
}
