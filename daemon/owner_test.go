package daemon

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestTwoDaemonsSideBySide runs two daemons with different state
// directories and the default container state and cgroup parent: each owns
// its own (derived from its state directory), so starting the second does
// not sweep the first's plugins. A third daemon given the first's cgroup
// parent by hand is refused instead of sweeping it.
func TestTwoDaemonsSideBySide(t *testing.T) {
	a, b := newDaemonProc(t), newDaemonProc(t)
	for _, d := range []*daemonProc{a, b} {
		d.ctState, d.cgroup = "", "" // the defaults
		root, _, err := container.DefaultsFor(d.state)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(root) }) // after the daemon stopped
	}
	a.start()
	a.ctl(false, "install", "--yes", exampleDir(t))
	first := a.waitRunning("media-badge", 0)

	b.start()
	b.ctl(false, "install", "--yes", exampleDir(t)) // the same plugin, the same instance names
	second := b.waitRunning("media-badge", 0)
	if second.PID == first.PID {
		t.Fatalf("both daemons report plugin pid %d", first.PID)
	}

	// Given the first daemon's cgroup parent by hand, a third daemon
	// refuses to start rather than sweep the first's sandboxes.
	if runtimeArgs(t) == nil {
		_, parent, err := container.DefaultsFor(a.state)
		if err != nil {
			t.Fatal(err)
		}
		c := newDaemonProc(t)
		c.cgroup = parent
		cmd := exec.Command(buildBin(t, "./cmd/dimplugd", false), "serve", "--state-dir", c.state, "--socket", c.socket,
			"--control-socket", c.control, "--container-state", c.ctState, "--cgroup-parent", c.cgroup)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(out.String(), "in use by another running daemon") {
				t.Errorf("third daemon on the first's cgroup parent: %v\n%s", err, out.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("third daemon on the first's cgroup parent kept running:\n%s", out.String())
		}
	}

	// The first daemon's plugin was left alone: same pid, still answering.
	time.Sleep(300 * time.Millisecond)
	if st := a.inspect("media-badge"); st.State != StateRunning || st.PID != first.PID || st.Restarts != 0 {
		t.Fatalf("first daemon's plugin after the others started: %+v (was pid %d)\nfirst daemon's log:\n%s", st, first.PID, a.log)
	}
	if err := syscall.Kill(first.PID, 0); err != nil {
		t.Fatalf("first daemon's plugin pid %d: %v", first.PID, err)
	}
	resp := &host.Response{Status: 200, Header: http.Header{}, Body: []byte(`{}`)}
	for _, d := range []*daemonProc{a, b} {
		s := dial(t, d.socket)
		if res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/7"), resp); res.Kind != host.MutateResponse {
			t.Errorf("daemon %s: no answer from its plugin: %+v", d.state, res)
		}
		s.Close()
	}
}
