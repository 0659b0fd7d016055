package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// daemonProc is a `dimplugd serve` process started by a test.
type daemonProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	socket  string // the host socket
	control string // the control socket
	state   string
	ctState string
	cgroup  string
	log     *syncLog // written by the process while the test reads it
	waited  chan struct{}
	bin     string   // the dimplugd binary to start; "" builds ./cmd/dimplugd
	args    []string // more flags for dimplugd serve
	env     []string // more environment variables
	files   []*os.File
	// prelude, when set, runs in /bin/sh before it executes dimplugd, as
	// systemd does things in the child between fork and exec (LISTEN_PID=$$).
	prelude string
}

// runtimeArgs picks the sandbox for daemon processes the way testRuntime
// does for in-process daemons.
func runtimeArgs(t *testing.T) []string {
	if err := container.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the container sandbox must run in CI but cannot: %v", err)
		}
		t.Logf("container sandbox unavailable (%v); running dimplugd --insecure-no-sandbox", err)
		return []string{"--insecure-no-sandbox"}
	}
	return nil
}

func newDaemonProc(t *testing.T) *daemonProc {
	dir := shortTempDir(t, "dpe")
	os.Chmod(dir, 0o711) // the sandbox's mapped uids pass through to the container state
	return &daemonProc{
		t:       t,
		socket:  filepath.Join(dir, "d.sock"),
		control: filepath.Join(dir, "control.sock"),
		state:   filepath.Join(dir, "state"),
		ctState: filepath.Join(dir, "ct"),
		cgroup:  fmt.Sprintf("dimplugd-e2e-%d", os.Getpid()),
	}
}

func (p *daemonProc) start() {
	t := p.t
	bin := p.bin
	if bin == "" {
		bin = buildBin(t, "./cmd/dimplugd", false)
	}
	args := []string{"serve", "--state-dir", p.state, "--socket", p.socket, "--control-socket", p.control}
	// Empty: the daemon derives them from its state directory.
	if p.ctState != "" {
		args = append(args, "--container-state", p.ctState)
	}
	if p.cgroup != "" {
		args = append(args, "--cgroup-parent", p.cgroup)
	}
	args = append(args, runtimeArgs(t)...)
	args = append(args, p.args...)
	p.cmd = exec.Command(bin, args...)
	if p.prelude != "" {
		p.cmd = exec.Command("/bin/sh", append([]string{"-c", p.prelude + `; exec "$0" "$@"`, bin}, args...)...)
	}
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.ExtraFiles = p.files
	p.log = &syncLog{}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.waited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.waited) }()
	t.Cleanup(p.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := host.DialControl(ctx, p.control)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-p.waited:
			t.Fatalf("dimplugd exited at start-up: %s", p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dimplugd did not serve %s within 20s: %v\n%s", p.socket, err, p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *daemonProc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.waited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.waited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.waited
		p.t.Errorf("dimplugd ignored SIGTERM for 20s:\n%s", p.log)
	}
}

func (p *daemonProc) kill9() {
	p.cmd.Process.Kill()
	<-p.waited
}

// ctl runs dimplugctl against the daemon and returns its stdout; a non-zero
// exit fails the test unless wantFail.
func (p *daemonProc) ctl(wantFail bool, args ...string) (string, string) {
	p.t.Helper()
	bin := buildBin(p.t, "./cmd/dimplugctl", true)
	cmd := exec.Command(bin, append([]string{"--socket", p.control}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if (err != nil) != wantFail {
		p.t.Fatalf("dimplugctl %s: err=%v\nstdout: %s\nstderr: %s\ndaemon log:\n%s", strings.Join(args, " "), err, out.String(), errb.String(), p.log)
	}
	return out.String(), errb.String()
}

func (p *daemonProc) inspect(name string) host.PluginStatus {
	p.t.Helper()
	out, _ := p.ctl(false, "inspect", "--json", name)
	var st host.PluginStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		p.t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	return st
}

func (p *daemonProc) waitRunning(name string, not int) host.PluginStatus {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := p.inspect(name)
		if st.State == StateRunning && st.PID != not {
			return st
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("plugin %s not running after 30s: %+v\n%s", name, st, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exampleDir builds the media-badge example into a copy of its directory.
func exampleDir(t *testing.T) string {
	bin := buildBin(t, "./examples/plugins/media-badge", true)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	copyFile(t, "../examples/plugins/media-badge/plugin.toml", filepath.Join(dir, "plugin.toml"), 0o644)
	copyFile(t, bin, filepath.Join(dir, "media-badge"), 0o755)
	return dir
}

// TestEndToEndWithBinaries is the user's path: dimplugd serve, dimplugctl
// install of the example plugin, a host dispatching a request and getting
// the plugin's change back, then the rest of the CLI.
func TestEndToEndWithBinaries(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	out, errOut := d.ctl(false, "install", "--yes", exampleDir(t))
	if !strings.Contains(out, "installed media-badge 1.0.0 (enabled)") || !strings.Contains(errOut, "use up to 32 MiB of memory") {
		t.Fatalf("install printed %q / %q", out, errOut)
	}
	st := d.waitRunning("media-badge", 0)
	if wantSandboxed := runtimeArgs(t) == nil; st.Sandboxed != wantSandboxed {
		t.Errorf("sandboxed = %v, want %v", st.Sandboxed, wantSandboxed)
	}

	s := dial(t, d.socket)
	resp := &host.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":42,"name":"Dune"}`)}
	for want := 1; want <= 2; want++ {
		res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/42"), resp)
		if res.Kind != host.MutateResponse || res.ResponseMutation.Header.Get("X-Dim-Badge") != "plugin-approved" {
			t.Fatalf("dispatch: got %+v", res)
		}
		var body map[string]any
		if err := json.Unmarshal(res.ResponseMutation.Body, &body); err != nil || body["views"] != float64(want) || body["name"] != "Dune" {
			t.Fatalf("body %s, want views=%d and the original fields", res.ResponseMutation.Body, want)
		}
	}

	// Errors keep their class through the socket, and the exit code
	// follows it (README's CLI reference).
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"inspect", "no-such-plugin"}, 3},
		{[]string{"install", "--yes", exampleDir(t)}, 4},
		{[]string{"inspect", "Not-A-Name"}, 5},
	} {
		bin := buildBin(t, "./cmd/dimplugctl", true)
		cmd := exec.Command(bin, append([]string{"--socket", d.control}, tt.args...)...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		err := cmd.Run()
		if cmd.ProcessState.ExitCode() != tt.code || strings.Contains(errb.String(), "[") {
			t.Errorf("dimplugctl %s: %v, exit code %d (want %d)\nstderr: %s", strings.Join(tt.args, " "), err, cmd.ProcessState.ExitCode(), tt.code, errb.String())
		}
	}

	out, _ = d.ctl(false, "ls")
	if !strings.Contains(out, "media-badge") || !strings.Contains(out, "running") {
		t.Errorf("ls: %s", out)
	}
	out, _ = d.ctl(false, "logs", "media-badge")
	if !strings.Contains(out, "media-badge ready") {
		t.Errorf("logs lack the plugin's structured log line:\n%s", out)
	}
	out, _ = d.ctl(false, "disable", "media-badge")
	if !strings.Contains(out, "disabled") {
		t.Errorf("disable: %s", out)
	}
	if res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/42"), resp); res.Kind != host.Continue {
		t.Errorf("a disabled plugin still hooks: %+v", res)
	}
	d.ctl(false, "enable", "media-badge")
	d.waitRunning("media-badge", 0)

	_, errOut = d.ctl(true, "inspect", "nosuch")
	if !strings.Contains(errOut, `plugin "nosuch" is not installed`) {
		t.Errorf("inspect of a missing plugin: %q", errOut)
	}
	_, errOut = d.ctl(true, "install", t.TempDir())
	if !strings.Contains(errOut, "plugin.toml") {
		t.Errorf("install of an empty dir: %q", errOut)
	}
	_, errOut = d.ctl(true, "install", exampleDir(t))
	if !strings.Contains(errOut, "--yes") {
		t.Errorf("install without a terminal or --yes must refuse and say how: %q", errOut)
	}
	d.ctl(false, "rm", "media-badge")
	out, _ = d.ctl(false, "ls", "--json")
	if strings.TrimSpace(out) != "[]" {
		t.Errorf("ls after rm: %s", out)
	}
}

// TestDaemonKill9 kills the daemon with SIGKILL and starts it again on the
// same state: installed plugins, their enabled flags and their data are all
// there, and enabled plugins run again.
func TestDaemonKill9(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	d.ctl(false, "install", "--yes", "--no-enable", pluginDir(t, testplugManifest("sleeper", nil, hooks("request", "GET", "/s/:id", "1s", "fail-open", 0))))
	first := d.waitRunning("media-badge", 0)
	s := dial(t, d.socket)
	resp := &host.Response{Status: 200, Header: http.Header{}, Body: []byte(`{}`)}
	for i := 0; i < 2; i++ {
		dispatch(t, s, host.PhaseResponse, get("/api/v1/media/7"), resp)
	}
	s.Close()

	d.kill9()
	d.start()
	second := d.waitRunning("media-badge", first.PID)
	if second.PID == first.PID {
		t.Fatalf("plugin pid unchanged across a daemon restart")
	}
	if st := d.inspect("sleeper"); st.Enabled || st.State != StateStopped {
		t.Errorf("disabled plugin after restart: %+v", st)
	}
	s = dial(t, d.socket)
	res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/7"), resp)
	var body map[string]any
	if err := json.Unmarshal(res.ResponseMutation.Body, &body); err != nil || body["views"] != float64(3) {
		t.Fatalf("KV data lost across kill -9: body %s, want views=3", res.ResponseMutation.Body)
	}
	// The first instance is gone: nothing of the dead daemon keeps running.
	if !processGone(first.PID, 5*time.Second) {
		t.Errorf("the first plugin instance (pid %d) outlived its daemon", first.PID)
	}
	if runtimeArgs(t) != nil {
		return // the rest is about the sandbox's cgroups, state and mounts
	}
	// What is left on the host is exactly the running instance: the dead
	// daemon's cgroups, container state and mounts were swept.
	cg, states, mounts := d.sandboxLeftovers(t)
	if len(cg) != 1 || len(states) != 1 {
		t.Errorf("after kill -9 and restart: cgroups %v, container states %v; want one each (the running instance)", cg, states)
	}
	for _, dir := range cg {
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if strings.TrimSpace(string(procs)) != fmt.Sprint(second.PID) {
			t.Errorf("cgroup %s holds %q, want only the running instance %d", dir, procs, second.PID)
		}
	}
	s.Close()
	d.stop()
	if cg, states, mounts := d.sandboxLeftovers(t); len(cg)+len(states)+mounts != 0 {
		t.Errorf("after a clean stop: cgroups %v, container states %v, %d mounts left", cg, states, mounts)
	}
	_ = mounts
}

// sandboxLeftovers lists what the container runtime of this daemon holds on
// the host: instance cgroups (memory hierarchy), container state
// directories, and mounts under its state root.
func (p *daemonProc) sandboxLeftovers(t *testing.T) (cgroups, states []string, mounts int) {
	t.Helper()
	cgroups, _ = filepath.Glob(filepath.Join("/sys/fs/cgroup/memory", p.cgroup, "*-*"))
	var dirs []string
	for _, c := range cgroups {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			dirs = append(dirs, c)
		}
	}
	entries, _ := os.ReadDir(p.ctState)
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			states = append(states, e.Name())
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, p.ctState) {
			mounts++
		}
	}
	return dirs, states, mounts
}

// processGone waits until pid no longer runs (absent, or a zombie waiting
// for its new parent to reap it).
func processGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
