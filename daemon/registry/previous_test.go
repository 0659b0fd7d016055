package registry

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func kvValue(t *testing.T, s *Store, plugin, key string) string {
	t.Helper()
	v, ok, err := s.KV(plugin).Get(key)
	if err != nil || !ok {
		t.Fatalf("kv %s/%s: %v (found %v)", plugin, key, err, ok)
	}
	return string(v)
}

// TestPreviousVersionAndRollback: a replacement with KeepPrevious keeps
// the replaced record, its files and a copy of its data; Rollback swaps
// them back (keeping the version rolled back from, with its data, or
// dropping it), surviving a reopen; Remove drops the previous version.
func TestPreviousVersionAndRollback(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	v1 := install(t, s, writePlugin(t, "prev", "1.0.0", ""), InstallOptions{Enable: true})
	if _, err := s.Previous("prev"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("previous of a fresh install: %v", err)
	}
	if err := s.KV("prev").Set("k", []byte("v1 data")); err != nil {
		t.Fatal(err)
	}
	v2 := install(t, s, writePlugin(t, "prev", "2.0.0", ""), InstallOptions{Replace: true, KeepPrevious: true})
	p, err := s.Previous("prev")
	if err != nil {
		t.Fatal(err)
	}
	if p.Record.Manifest.Version != "1.0.0" || p.Record.Dir != v1.Dir || string(p.KV["k"]) != "v1 data" {
		t.Fatalf("previous after the upgrade: %+v", p)
	}
	if _, err := os.Stat(filepath.Join(v1.Dir, "run.sh")); err != nil {
		t.Fatalf("the previous version's files: %v", err)
	}
	if err := s.KV("prev").Set("k", []byte("v2 data")); err != nil {
		t.Fatal(err)
	}
	if err := s.KV("prev").Set("only-v2", []byte("x")); err != nil {
		t.Fatal(err)
	}

	// The previous version's files survive a reopen (they are referenced).
	s.Close()
	s = openStore(t, dir)

	back, err := s.Rollback("prev", true)
	if err != nil {
		t.Fatal(err)
	}
	if back.Manifest.Version != "1.0.0" || back.Dir != v1.Dir || !back.Enabled {
		t.Errorf("after rollback: %+v", back)
	}
	if v := kvValue(t, s, "prev", "k"); v != "v1 data" {
		t.Errorf("kv after rollback: %q", v)
	}
	if _, ok, _ := s.KV("prev").Get("only-v2"); ok {
		t.Error("a key written after the upgrade survived the rollback")
	}
	if p, err := s.Previous("prev"); err != nil || p.Record.Dir != v2.Dir || string(p.KV["k"]) != "v2 data" {
		t.Errorf("previous after rollback: %+v, %v", p, err)
	}

	fwd, err := s.Rollback("prev", false)
	if err != nil {
		t.Fatal(err)
	}
	if fwd.Manifest.Version != "2.0.0" || kvValue(t, s, "prev", "k") != "v2 data" || kvValue(t, s, "prev", "only-v2") != "x" {
		t.Errorf("after the second rollback: %+v", fwd)
	}
	if _, err := s.Previous("prev"); !errors.Is(err, ErrNotFound) {
		t.Errorf("previous after a rollback that drops it: %v", err)
	}
	if _, err := s.Rollback("prev", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("rollback without a previous version: %v", err)
	}

	install(t, s, writePlugin(t, "prev", "3.0.0", ""), InstallOptions{Replace: true, KeepPrevious: true})
	if err := s.Remove("prev"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Previous("prev"); !errors.Is(err, ErrNotFound) {
		t.Errorf("previous after remove: %v", err)
	}
}
