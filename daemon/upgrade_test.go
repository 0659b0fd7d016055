//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestUpgradeInPlace: SIGUSR2 makes the daemon execute the binary now
// installed at its path in its own process, handing its running plugins to
// it. Under load from two hosts — one calling hooks over direct lanes, one
// through the daemon — the plugins keep their processes (the same pids:
// adopted, not restarted) and their state; no request fails or hangs; over
// direct lanes every request is answered normally throughout; streams
// through an adopted plugin work with the new daemon.
func TestUpgradeInPlace(t *testing.T) {
	d := newDaemonProc(t)
	bin := filepath.Join(t.TempDir(), "dimplugd")
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), bin, 0o755)
	d.bin = bin
	d.start()
	hookedPlugins(t, d)
	d.ctl(false, "install", "--yes", pluginDir(t, testplugManifest("kvplug", nil,
		hooks("response", "GET", "/kv/:id", "2s", "fail-closed", 0))))
	d.ctl(false, "install", "--yes", pluginDir(t, testplugManifest("xorplug", []string{"-frames", "xor"},
		streamStage("xor", "video/segment", "transform", "fail-closed", "2s", 0))))
	pids := map[string]int{}
	for _, name := range []string{"openplug", "closedplug", "kvplug", "xorplug"} {
		pids[name] = d.waitRunning(name, 0).PID
	}
	daemonPid := d.cmd.Process.Pid

	direct := dial(t, d.socket)
	through := dial(t, d.socket, host.WithoutDirectLanes())
	hits := func() string {
		t.Helper()
		res := dispatch(t, through, host.PhaseResponse, get("/kv/1"), &host.Response{Status: 200})
		if res.Kind != host.MutateResponse {
			t.Fatalf("kvplug: %+v", res)
		}
		return res.ResponseMutation.Header.Get("X-Test-Hits")
	}
	before := hits()
	xorStream := func(s *host.Session) {
		t.Helper()
		st := openStream(t, s, "video/segment")
		out := roundTrip(t, st, []int{4096})
		want := pattern(0, 4096)
		for i := range want {
			want[i] ^= 0x5a
		}
		if string(out[0]) != string(want) {
			t.Error("a stream through xorplug came back wrong")
		}
		st.CloseSend()
	}
	xorStream(direct)
	// The first calls ask for direct lanes (granted in the background, well
	// within the load's first 300 ms below).
	dispatch(t, direct, host.PhaseRequest, get("/open/1"), nil)
	dispatch(t, direct, host.PhaseRequest, get("/closed/1"), nil)

	// The package manager puts a new binary in place.
	next := bin + ".new"
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), next, 0o755)
	if err := os.Rename(next, bin); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	directLoad, waitDirect := underLoad(direct, stop)
	throughLoad, waitThrough := underLoad(through, stop)
	time.Sleep(300 * time.Millisecond)
	open := openStream(t, direct, "video/segment")
	logBefore := strings.Count(d.log.String(), "dimplugd started")
	signalled := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the new daemon image serving", func() bool {
		return strings.Count(d.log.String(), "dimplugd started") > logBefore
	})
	ready := time.Now()
	for name, pid := range pids {
		if st := d.waitRunning(name, 0); st.PID != pid {
			t.Errorf("%s: pid %d after the upgrade, %d before: restarted, not adopted\n%s", name, st.PID, pid, d.log)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := open.Recv(ctx); !errors.Is(err, host.ErrStreamCut) {
		t.Errorf("a stream open during the upgrade: %v, want host.ErrStreamCut", err)
	}
	time.Sleep(500 * time.Millisecond) // load after the upgrade
	close(stop)
	waitDirect()
	waitThrough()

	select {
	case <-d.waited:
		t.Fatalf("the daemon exited:\n%s", d.log)
	default:
	}
	if d.cmd.Process.Pid != daemonPid {
		t.Fatal("the daemon's pid changed")
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", daemonPid))
	if err != nil || strings.HasSuffix(exe, "(deleted)") {
		t.Errorf("the daemon runs %q (%v), want the new binary", exe, err)
	}
	log := d.log.String()
	for _, want := range []string{"upgrading in place", "ready to execute the new binary", "plugins_handed_over=4"} {
		if !strings.Contains(log, want) {
			t.Errorf("the daemon's log lacks %q:\n%s", want, log)
		}
	}
	gap := time.Duration(0)
	if last := throughLoad.lastAbnormal.Load(); last != 0 {
		gap = time.Unix(0, last).Sub(signalled)
	}
	t.Logf("upgrade in place: new image serving %s after SIGUSR2; over direct lanes: %s; through the daemon: %s (last answer by policy %s after SIGUSR2)",
		ready.Sub(signalled).Round(time.Millisecond), directLoad, throughLoad, gap.Round(time.Millisecond))
	for name, l := range map[string]*restartLoad{"direct": directLoad, "through the daemon": throughLoad} {
		if l.failed.Load() != 0 || l.hung.Load() != 0 {
			t.Errorf("%s: %s; first failures: %q", name, l, l.failures)
		}
		if l.normal.Load() == 0 {
			t.Errorf("%s: %s: no normal answers", name, l)
		}
	}
	for name, l := range map[string]*restartLoad{"over direct lanes": directLoad, "through the daemon": throughLoad} {
		if l.policy.Load() != 0 {
			t.Errorf("%s, hooks stopped answering normally during the upgrade: %s; %q", name, l, l.byPolicy)
		}
	}

	// The adopted plugins serve the new daemon: their state is intact, the
	// host services they were given are the new daemon's, and streams work.
	after := hits()
	if after == "" || before == "" || after <= before && len(after) <= len(before) {
		t.Errorf("kvplug's counter: %q before the upgrade, %q after: its state or its store went missing", before, after)
	}
	xorStream(direct)
	xorStream(through)
}
