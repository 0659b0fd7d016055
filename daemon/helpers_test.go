package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// binDir holds binaries built once per test run.
var binDir string

func TestMain(m *testing.M) {
	container.Init() // the container runtime re-executes this binary as init
	dir, err := os.MkdirTemp("", "dimplugd-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// buildBin builds a package of this module once per run. Static binaries
// (plugins) are built without cgo; the daemon with the seccomp tag.
func buildBin(t testing.TB, pkg string, static bool) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if !static {
		args = append(args, "-tags", "seccomp")
	} else {
		// Plugins without symbol tables: a third smaller, so every
		// install's archive, hashing and copy costs less (most under -race).
		args = append(args, "-trimpath", "-ldflags=-s -w")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = ".."
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

var runtimeSeq atomic.Int64

// testRuntime returns the container runtime where it can run. In CI it must:
// a sandbox test never skips there.
func testRuntime(t testing.TB) sandbox.Runtime {
	t.Helper()
	if os.Getenv("DIMPLUGD_TEST_RUNTIME") == "process" && os.Getenv("CI") != "true" {
		t.Log("DIMPLUGD_TEST_RUNTIME=process: running plugins unsandboxed")
		return sandbox.ProcessRuntime{}
	}
	if err := container.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the container sandbox must run in CI but cannot: %v", err)
		}
		t.Logf("container sandbox unavailable (%v); using the plain process runtime", err)
		return sandbox.ProcessRuntime{}
	}
	rt, err := container.New(container.Config{
		StateRoot:    shortTempDir(t, "ct"),
		CgroupParent: fmt.Sprintf("dimplugd-test-%d-%d", os.Getpid(), runtimeSeq.Add(1)), // one Runtime per cgroup parent
	})
	if err != nil {
		t.Fatalf("container runtime: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// shortTempDir is a temporary directory with a short path: Unix socket paths
// are limited to 108 bytes.
func shortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// pluginDir makes an installable plugin directory holding the testplug
// binary and the given manifest.
func pluginDir(t testing.TB, manifest string) string {
	t.Helper()
	bin := buildBin(t, "./daemon/testdata/testplug", true)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	copyFile(t, bin, filepath.Join(dir, "testplug"), 0o755)
	os.Chmod(dir, 0o755)
	return dir
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// testplugManifest is a manifest for testplug with the given hooks (TOML
// [[hooks]] tables) and args.
func testplugManifest(name string, args []string, hooks string) string {
	var quoted []string
	for _, a := range args {
		quoted = append(quoted, fmt.Sprintf("%q", a))
	}
	return fmt.Sprintf(`name = %q
version = "1.0.0"
entrypoint = "testplug"
args = [%s]
%s`, name, strings.Join(quoted, ", "), hooks)
}

// testDaemon is a daemon running in the test process.
type testDaemon struct {
	*Daemon
	socket  string // the host socket
	control string // the control socket
	state   string
	ctl     *host.Control
}

// fastSupervision keeps restart tests short.
var fastSupervision = Supervision{
	StartTimeout:      20 * time.Second,
	StopGrace:         2 * time.Second,
	TermGrace:         time.Second,
	HealthInterval:    200 * time.Millisecond,
	HealthTimeout:     2 * time.Second,
	BackoffInitial:    300 * time.Millisecond,
	BackoffMax:        2 * time.Second,
	QuarantineCrashes: 3,
	QuarantineWindow:  time.Minute,
}

func startDaemon(t testing.TB, rt sandbox.Runtime, sup Supervision) *testDaemon {
	t.Helper()
	return startDaemonConfig(t, Config{Runtime: rt, Supervision: sup})
}

// startDaemonConfig starts a daemon with cfg, filling in StateDir, Socket,
// ControlSocket and Logger (and Runtime when nil).
func startDaemonConfig(t testing.TB, cfg Config) *testDaemon {
	t.Helper()
	dir := shortTempDir(t, "dpd")
	td := &testDaemon{socket: filepath.Join(dir, "d.sock"), control: filepath.Join(dir, "c.sock"), state: filepath.Join(dir, "state")}
	cfg.StateDir, cfg.Socket, cfg.ControlSocket = td.state, td.socket, td.control
	if cfg.Runtime == nil {
		cfg.Runtime = testRuntime(t)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	td.Daemon = d
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if td.ctl, err = host.DialControl(ctx, td.control); err != nil {
		d.Close()
		t.Fatalf("dial control: %v", err)
	}
	t.Cleanup(func() {
		td.ctl.Close()
		if err := d.Close(); err != nil {
			t.Errorf("close daemon: %v", err)
		}
	})
	return td
}

func (td *testDaemon) install(t testing.TB, dir string) *host.PluginStatus {
	t.Helper()
	archive, err := host.Archive(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := td.ctl.Install(ctx, archive, host.InstallOptions{Enable: true})
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	return st
}

// waitState polls a plugin until cond holds, failing the test after
// timeout with the last status seen.
func waitState(t testing.TB, ctl *host.Control, name string, timeout time.Duration, what string, cond func(*host.PluginStatus) bool) *host.PluginStatus {
	t.Helper()
	var last *host.PluginStatus
	if poll(timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := ctl.Inspect(ctx, name)
		if err == nil {
			last = st
		}
		return err == nil && cond(st)
	}) {
		return last
	}
	t.Fatalf("plugin %q: timed out after %s waiting for %s; last status: %+v", name, timeout, what, last)
	return nil
}

// poll calls cond until it holds (true) or timeout has passed (false).
// Every test that waits for a condition waits through it.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// syncLog collects output written from several goroutines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func running(st *host.PluginStatus) bool { return st.State == StateRunning }

func dial(t testing.TB, socket string, opts ...host.Option) *host.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := host.Dial(ctx, socket, opts...)
	if err != nil {
		t.Fatalf("host dial: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testPlugin is a testplug plugin to install: its -frames mode ("" for
// none) and what its manifest adds (hooks, [[streams]] stages).
type testPlugin struct {
	name, frames, extra string
	args                []string // more arguments for testplug
}

// startWithPlugins starts a daemon with the plugins installed and running.
func startWithPlugins(t testing.TB, sup Supervision, plugins ...testPlugin) *testDaemon {
	t.Helper()
	td := startDaemon(t, testRuntime(t), sup)
	for _, p := range plugins {
		var args []string
		if p.frames != "" {
			args = []string{"-frames", p.frames}
		}
		args = append(args, p.args...)
		td.install(t, pluginDir(t, testplugManifest(p.name, args, p.extra)))
	}
	for _, p := range plugins {
		waitState(t, td.ctl, p.name, 30*time.Second, "running", running)
	}
	return td
}
