package registry

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// TestUninstallKeepsData: an uninstall without purge keeps the plugin's
// key-value data and settings (with the right count), which a later fresh
// install of the name finds; state check does not call kept data damage;
// purge deletes it, both when uninstalling and afterwards; the old Remove
// deletes everything as before.
func TestUninstallKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	src := writePlugin(t, "keeper", "1.0.0", "")
	install(t, s, src, InstallOptions{})
	if err := s.KV("keeper").Set("views/1", []byte("12")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KV("keeper").Increment("views/2", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Settings("keeper").Put(manifest.ScopeGlobal, 0, map[string]any{"on": true}); err != nil {
		t.Fatal(err)
	}
	use, err := s.Uninstall("keeper", false)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := int64(len("views/1")+len("12")+len("views/2")+len("3")) + int64(len(`{"on":true}`))
	if use.Keys != 2 || use.Settings != 1 || use.Bytes != wantBytes {
		t.Errorf("kept %+v, want 2 keys, 1 settings object, %d bytes", use, wantBytes)
	}
	if _, err := s.Get("keeper"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after uninstall: %v", err)
	}
	if _, _, err := s.KV("keeper").Get("views/1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the KV of an uninstalled plugin answers: %v", err)
	}
	if kept, ok, err := s.KeptData("keeper"); err != nil || !ok || kept != use {
		t.Fatalf("KeptData = %+v, %v, %v", kept, ok, err)
	}
	if _, err := s.Uninstall("keeper", false); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "are kept (purge deletes them)") {
		t.Fatalf("uninstall again: %v", err)
	}
	assertClean(t, s)

	// state check: kept data is not damage.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := CheckState(dir)
	if err != nil || r.Damaged() {
		t.Fatalf("state check with kept data: %+v, %v", r, err)
	}
	if len(r.Kept) != 1 || r.Kept[0].Plugin != "keeper" || r.Kept[0].Version != "1.0.0" || r.Kept[0].Usage != use || time.Since(r.Kept[0].RemovedAt) > time.Minute {
		t.Errorf("state check lists kept data %+v, want keeper's %+v", r.Kept, use)
	}
	s = openStore(t, dir)

	// A fresh install finds it, and says so.
	if rec := install(t, s, src, InstallOptions{}); rec.KeptData != use {
		t.Errorf("the reinstall took over %+v, want %+v", rec.KeptData, use)
	}
	if v, ok, err := s.KV("keeper").Get("views/1"); err != nil || !ok || string(v) != "12" {
		t.Fatalf("reinstalled: views/1 = %q, %v, %v", v, ok, err)
	}
	if n, err := s.KV("keeper").Increment("views/2", 1); err != nil || n != 4 {
		t.Fatalf("reinstalled: views/2 + 1 = %d, %v", n, err)
	}
	if v, ok, err := s.Settings("keeper").Get(manifest.ScopeGlobal, 0); err != nil || !ok || v["on"] != true {
		t.Fatalf("reinstalled: settings %v, %v, %v", v, ok, err)
	}
	if _, ok, _ := s.KeptData("keeper"); ok {
		t.Fatal("still listed as kept after the reinstall")
	}

	// Purge after the fact, then a fresh install starts empty.
	if _, err := s.Uninstall("keeper", false); err != nil {
		t.Fatal(err)
	}
	if use, err := s.Uninstall("keeper", true); err != nil || use.Keys != 2 {
		t.Fatalf("purge of kept data: %+v, %v", use, err)
	}
	if _, ok, _ := s.KeptData("keeper"); ok {
		t.Fatal("still kept after purge")
	}
	install(t, s, src, InstallOptions{})
	if keys, err := s.KV("keeper").List("", 0); err != nil || len(keys) != 0 {
		t.Fatalf("fresh after purge: %q, %v", keys, err)
	}
	if _, ok, err := s.Settings("keeper").Get(manifest.ScopeGlobal, 0); err != nil || ok {
		t.Fatalf("fresh after purge: settings found %v, %v", ok, err)
	}

	// Purge at uninstall.
	if err := s.KV("keeper").Set("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if use, err := s.Uninstall("keeper", true); err != nil || use.Keys != 1 {
		t.Fatalf("uninstall --purge: %+v, %v", use, err)
	}
	if _, ok, _ := s.KeptData("keeper"); ok {
		t.Fatal("kept after uninstall --purge")
	}
	if _, err := s.Uninstall("keeper", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purge of nothing: %v", err)
	}

	// Nothing to keep: nothing listed.
	install(t, s, src, InstallOptions{})
	if _, err := s.Uninstall("keeper", false); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.KeptData("keeper"); ok {
		t.Fatal("a plugin without data is listed as kept")
	}
	assertClean(t, s)
}
