package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/daemon/registry"
)

// TestStateCLI drives `dimplugd serve` and `dimplugd state check|restore|
// compact` on a state directory whose registry.db was cut in half: serve
// refuses it unchanged and points at `dimplugd state restore`, check names
// the damage and fails, restore puts back the backup, after which check
// passes and the registry opens with its plugin, and compact reports the
// sizes it left.
func TestStateCLI(t *testing.T) {
	bin := buildBin(t, "./cmd/dimplugd", false)
	tmp := shortTempDir(t, "dst")
	state := filepath.Join(tmp, "state")
	db := filepath.Join(state, "registry.db")

	// dimplugd runs bin and returns its exit code, stdout and stderr.
	dimplugd := func(args ...string) (int, string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		code := 0
		switch {
		case errors.As(err, &ee) && ee.Exited():
			code = ee.ExitCode()
		case err != nil:
			t.Fatalf("dimplugd %s: %v (stderr %s)", strings.Join(args, " "), err, stderr.String())
		}
		return code, stdout.String(), stderr.String()
	}
	expect := func(what string, code int, stdout, stderr string, wantCode int, wants ...string) {
		t.Helper()
		if code != wantCode {
			t.Errorf("%s exited %d, want %d\nstdout:\n%s\nstderr:\n%s", what, code, wantCode, stdout, stderr)
		}
		for _, want := range wants {
			if !strings.Contains(stdout+stderr, want) {
				t.Errorf("%s does not say %q\nstdout:\n%s\nstderr:\n%s", what, want, stdout, stderr)
			}
		}
	}

	// A state directory with an installed plugin and a backup.
	src := t.TempDir()
	for name, content := range map[string]string{
		"plugin.toml": "name = \"clitest\"\nversion = \"1.0.0\"\nentrypoint = \"run.sh\"\n",
		"run.sh":      "#!/bin/sh\nexit 0\n",
	} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, err := registry.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.InstallDir(context.Background(), src, registry.InstallOptions{Enable: true}); err != nil {
		t.Fatal(err)
	}
	backup, err := s.Backup()
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := dimplugd("state", "check", "--state-dir", state)
	expect("state check while the registry is open", code, out, errOut, 7, "in use by a running dimplugd", "stop dimplugd first")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Cut registry.db in half.
	whole, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	damaged := whole[:len(whole)/2]
	if err := os.WriteFile(db, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	plugins := dirEntries(t, filepath.Join(state, "plugins"))

	start := time.Now()
	code, out, errOut = dimplugd("serve", "--insecure-no-sandbox", "--state-dir", state,
		"--socket", filepath.Join(tmp, "d.sock"), "--control-socket", filepath.Join(tmp, "c.sock"))
	expect("serve on a damaged registry", code, out, errOut, 6,
		"registry database "+db+" is damaged", "truncated", "did not start", "the file is unchanged",
		"`dimplugd state restore --state-dir "+state+"`")
	t.Logf("serve refused in %v:\n%s", time.Since(start).Round(time.Millisecond), errOut)
	if after, err := os.ReadFile(db); err != nil || !bytes.Equal(after, damaged) {
		t.Errorf("serve changed registry.db (%v)", err)
	}
	if got := dirEntries(t, filepath.Join(state, "plugins")); !reflect.DeepEqual(got, plugins) {
		t.Errorf("plugins/ holds %v after serve refused, want %v", got, plugins)
	}

	code, out, errOut = dimplugd("state", "check", "--state-dir", state)
	expect("state check of the damaged registry", code, out, errOut, 6,
		"registry.db: DAMAGED: it is truncated", "is damaged: registry.db: it is truncated",
		"`dimplugd state restore --state-dir "+state+"` to go back to the last good backup ("+backup)
	code, out, errOut = dimplugd("state", "check", "--json", "--state-dir", state)
	var report struct {
		Damaged bool `json:"damaged"`
		DB      struct {
			Damaged bool   `json:"damaged"`
			Problem string `json:"problem"`
		} `json:"registry_db"`
		Backups []struct {
			Path string `json:"path"`
			OK   bool   `json:"ok"`
		} `json:"backups"`
		Restore string `json:"restore"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Errorf("state check --json: %v\n%s", err, out)
	}
	if code != 6 || !report.Damaged || !report.DB.Damaged || !strings.Contains(report.DB.Problem, "truncated") ||
		len(report.Backups) != 1 || report.Backups[0].Path != backup || !report.Backups[0].OK ||
		!strings.Contains(report.Restore, "dimplugd state restore") {
		t.Errorf("state check --json exited %d with %+v", code, report)
	}

	code, out, errOut = dimplugd("state", "restore", "--state-dir", state)
	expect("state restore", code, out, errOut, 0, "Restored registry.db from "+backup, "registry.db.damaged-", "state check")
	code, out, errOut = dimplugd("state", "check", "--state-dir", state)
	expect("state check after the restore", code, out, errOut, 0, "registry.db: good: 1 plugin", "No damage found")

	s, err = registry.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List()
	if err != nil || len(recs) != 1 || recs[0].Name != "clitest" || !recs[0].Enabled {
		t.Errorf("after the restore the registry lists %+v (%v), want clitest, enabled", recs, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut = dimplugd("state", "compact", "--state-dir", state)
	expect("state compact", code, out, errOut, 0, "Compacted "+db, "before", "after")
	m := regexp.MustCompile(`before [^,]*?(\d+) bytes\)?, after [^,]*?(\d+) bytes`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("state compact does not report the sizes:\n%s", out)
	}
	before, _ := strconv.ParseInt(m[1], 10, 64)
	after, _ := strconv.ParseInt(m[2], 10, 64)
	now, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if before != fi.Size() || after != now.Size() {
		t.Errorf("state compact reports %d → %d bytes, but registry.db was %d and is %d bytes", before, after, fi.Size(), now.Size())
	}
	code, out, errOut = dimplugd("state", "check", "--state-dir", state)
	expect("state check after compact", code, out, errOut, 0, "registry.db: good: 1 plugin")
}

func dirEntries(t *testing.T, dir string) []string {
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
