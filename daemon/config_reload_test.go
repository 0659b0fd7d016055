package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestConfigFileAndReload: dimplugd serve --config reads the file, `dimplugd
// config check` checks it, and SIGHUP applies what can change live (log
// level, limits, [deadlines]) while saying what needs a restart; a file
// that no longer loads changes nothing.
func TestConfigFileAndReload(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "config.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("max_conns = 512\n")
	d := newDaemonProc(t)
	d.args = append(d.args, "--config", conf)
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	d.waitRunning("media-badge", 0)

	// config check: the same file, checked without a daemon.
	bin := buildBin(t, "./cmd/dimplugd", false)
	out, err := exec.Command(bin, "config", "check", "--config", conf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), conf+": OK") || !strings.Contains(string(out), "max_conns                = 512") {
		t.Errorf("config check: %v\n%s", err, out)
	}

	hups := 0
	reloaded := func(what string) {
		t.Helper()
		hups++
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, what, func() bool { return strings.Count(d.log.String(), "msg=\"config ") >= hups })
	}
	badge := func() host.HookInfo {
		t.Helper()
		for _, h := range d.inspect("media-badge").Hooks {
			if h.Name == "badge" {
				return h
			}
		}
		t.Fatal("media-badge has no hook badge")
		return host.HookInfo{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	holdControl := func() func() {
		c, err := host.DialControl(ctx, d.control)
		if err != nil {
			t.Fatal(err)
		}
		return func() { c.Close() }
	}

	// A reload: one control connection per uid, a deadline override, debug
	// logs, and a key that needs a restart.
	write("max_conns = 512\ncontrol_conns_per_uid = 1\ndebug = true\nprestart = true\n[deadlines]\n\"media-badge/badge\" = \"120ms\"\n")
	reloaded("the first reload")
	log := d.log.String()
	for _, want := range []string{`msg="config reloaded"`, `applied="control_conns_per_uid,deadlines.\"media-badge/badge\",debug"`,
		`keys=prestart`, "need a restart"} {
		if !strings.Contains(log, want) {
			t.Errorf("reload log lacks %s:\n%s", want, log)
		}
	}
	if h := badge(); h.Deadline != "120ms" || !h.DeadlineOverridden {
		t.Errorf("badge deadline after reload = %s (overridden %v), want 120ms", h.Deadline, h.DeadlineOverridden)
	}
	release := holdControl()
	if _, errOut := d.ctl(true, "ls"); !strings.Contains(errOut, "--control-conns-per-uid") {
		t.Errorf("a second control connection with control_conns_per_uid = 1: %s", errOut)
	}
	release()

	// A file that does not load: nothing changes.
	write("control_conns_per_uid = 16\nmax_con = 3\n")
	reloaded("the refused reload")
	if log := d.log.String(); !strings.Contains(log, "config not reloaded") || !strings.Contains(log, "max_con: unknown key (did you mean max_conns?)") {
		t.Errorf("refused reload not logged:\n%s", log)
	}
	if out, err := exec.Command(bin, "config", "check", "--config", conf).CombinedOutput(); err == nil || !strings.Contains(string(out), conf+":2: max_con") {
		t.Errorf("config check of a bad file: %v\n%s", err, out)
	} else if code := err.(*exec.ExitError).ExitCode(); code != 5 {
		t.Errorf("config check of a bad file exits %d, want 5 (invalid)", code)
	}
	if h := badge(); h.Deadline != "120ms" {
		t.Errorf("a refused reload changed the deadline: %s", h.Deadline)
	}

	// Back: the override goes (the manifest's deadline returns), and the
	// per-uid cap is the default again.
	write("max_conns = 512\n")
	reloaded("the last reload")
	if h := badge(); h.Deadline != "200ms" || h.DeadlineOverridden {
		t.Errorf("badge deadline after the override left the file = %s (overridden %v), want the manifest's 200ms", h.Deadline, h.DeadlineOverridden)
	}
	release = holdControl()
	d.ctl(false, "ls")
	release()
	d.stop()
}
