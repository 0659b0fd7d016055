package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdInstall: `make install DESTDIR=...` puts the binaries, the
// units, the sysusers.d entry, the default config and the guide in place,
// and systemd-analyze verify accepts the installed units (with ExecStart=
// pointing into DESTDIR, where the binaries are).
func TestSystemdInstall(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("systemd-analyze must exist in CI (Debian package systemd, in the Makefile's APT_PKGS): %v", err)
		}
		t.Skip("systemd-analyze not installed")
	}
	if testing.Short() {
		t.Skip("builds everything with make")
	}
	dest := t.TempDir()
	make := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "BIN="+filepath.Join(dest, "build"))
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{
		"usr/local/bin/dimplugd", "usr/local/bin/dimplugctl", "usr/local/bin/dimplugd-conformance-plugin",
		"etc/systemd/system/dimplugd.service", "etc/systemd/system/dimplugd.socket",
		"etc/sysusers.d/dimplugd.conf", "etc/dimplugd/config.toml",
		"usr/local/share/doc/dimplugd/operate-systemd.md",
	} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	// An operator's config survives a second install.
	conf := filepath.Join(dest, "etc/dimplugd/config.toml")
	if err := os.WriteFile(conf, []byte("debug = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	make = exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "BIN="+filepath.Join(dest, "build"))
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make install again: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(conf); string(b) != "debug = true\n" {
		t.Errorf("make install overwrote config.toml: %q", b)
	}

	check := t.TempDir()
	var units []string
	for _, u := range []string{"dimplugd.service", "dimplugd.socket"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", u))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "/usr/local/bin/", filepath.Join(dest, "usr/local/bin")+"/")
		p := filepath.Join(check, u)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
