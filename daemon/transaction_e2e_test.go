package daemon

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// withVersion rewrites the version in dir's plugin.toml.
func withVersion(t *testing.T, dir, version string, extra string) {
	t.Helper()
	p := filepath.Join(dir, "plugin.toml")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(data), `version = "1.0.0"`, `version = "`+version+`"`+extra, 1)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTransactionsEndToEnd is the operator's path with the real binaries:
// install answers once the plugin runs; an upgrade whose new version
// cannot start fails with the reason and exit code 7, leaving the old
// version running; a good upgrade keeps the old version for rollback,
// which returns to it.
func TestTransactionsEndToEnd(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	out, _ := d.ctl(false, "install", "--yes", exampleDir(t))
	if !strings.Contains(out, "installed media-badge 1.0.0") {
		t.Fatalf("install printed %q", out)
	}
	// No polling: install waited for it.
	first := d.inspect("media-badge")
	if first.State != StateRunning {
		t.Fatalf("state right after install: %+v", first)
	}

	// A version that exits at start: testplug -fail-start as its
	// entrypoint.
	broken := exampleDir(t)
	copyFile(t, buildBin(t, "./daemon/testdata/testplug", true), filepath.Join(broken, "media-badge"), 0o755)
	withVersion(t, broken, "2.0.0", "\nargs = [\"-fail-start\"]")
	cmd := exec.Command(buildBin(t, "./cmd/dimplugctl", true), "--socket", d.control, "install", "--replace", "--yes", broken)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("broken upgrade: %v (want exit code 7)\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"version 2.0.0 did not become healthy", "refusing to start on purpose", "rolled back to version 1.0.0"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("broken upgrade's message does not say %q:\n%s", want, stderr.String())
		}
	}
	if st := d.inspect("media-badge"); st.Version != "1.0.0" || st.State != StateRunning || st.PID != first.PID || st.PreviousVersion != "" {
		t.Fatalf("after the broken upgrade: %+v", st)
	}

	good := exampleDir(t)
	withVersion(t, good, "2.0.0", "")
	if out, _ := d.ctl(false, "install", "--replace", "--yes", good); !strings.Contains(out, "installed media-badge 2.0.0") {
		t.Fatalf("upgrade printed %q", out)
	}
	if out, _ := d.ctl(false, "inspect", "media-badge"); !strings.Contains(out, "Previous:    1.0.0") {
		t.Errorf("inspect after the upgrade does not show the previous version:\n%s", out)
	}
	if out, _ := d.ctl(false, "rollback", "media-badge"); !strings.Contains(out, "rolled back media-badge to 1.0.0 (enabled, running; previous: 2.0.0)") {
		t.Errorf("rollback printed %q", out)
	}
	if st := d.inspect("media-badge"); st.Version != "1.0.0" || st.State != StateRunning || st.PreviousVersion != "2.0.0" {
		t.Errorf("after rollback: %+v", st)
	}
	if _, errOut := d.ctl(true, "rollback", "nope"); !strings.Contains(errOut, "nope") {
		t.Errorf("rollback of an unknown plugin: %q", errOut)
	}
}
