//go:build linux && cgo

package container

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
)

// helperEnv makes the test binary act as a short-lived daemon for TestSweep:
// it starts one instance and then waits to be killed.
const helperEnv = "DIMPLUGD_CONTAINER_TEST_HELPER"

// probeDir holds the probe plugin, built once per test run.
var (
	probeDir  string
	probeOnce sync.Once
	probeErr  error
)

// initialMountNS is the test process's mount namespace before any sandbox
// was started.
var initialMountNS string

func TestMain(m *testing.M) {
	Init()
	initialMountNS, _ = os.Readlink("/proc/self/ns/mnt")
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	code := m.Run()
	if probeDir != "" {
		os.RemoveAll(probeDir)
	}
	os.Exit(code)
}

// requireSandbox skips the test when the container runtime cannot run here,
// or fails it when CI=true says it must.
func requireSandbox(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but the sandbox cannot run: %v", err)
		}
		t.Skipf("sandbox cannot run here: %v", err)
	}
}

// probeBinary builds testdata/probe as a static binary, once.
func probeBinary(t testing.TB) string {
	t.Helper()
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dimplugd-probe-")
		if err != nil {
			probeErr = err
			return
		}
		probeDir = dir
		out := filepath.Join(dir, "probe")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOPROXY=off", "GOTOOLCHAIN=local")
		if msg, err := cmd.CombinedOutput(); err != nil {
			probeErr = fmt.Errorf("build probe: %v\n%s", err, msg)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	return filepath.Join(probeDir, "probe")
}

// pluginRoot makes an installed-plugin directory holding the probe and a data
// file.
func pluginRoot(t testing.TB) string {
	t.Helper()
	bin := probeBinary(t)
	root := t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "probe"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "data.txt"), []byte("plugin data"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

var harnessSeq atomic.Int64

type harness struct {
	rt        *Runtime
	stateRoot string
	parent    string
	root      string // plugin root with the probe
}

// newHarness makes a Runtime with its own state root (on /run, a tmpfs, as
// in production) and cgroup parent, removed when the test ends.
func newHarness(t testing.TB) *harness {
	t.Helper()
	requireSandbox(t)
	stateRoot, err := os.MkdirTemp("/run", "dimplugd-test-")
	if err != nil {
		t.Fatal(err)
	}
	parent := fmt.Sprintf("dimplugd-test-%d-%d", os.Getpid(), harnessSeq.Add(1))
	rt, err := New(Config{StateRoot: stateRoot, CgroupParent: parent})
	if err != nil {
		os.RemoveAll(stateRoot)
		t.Fatal(err)
	}
	h := &harness{rt: rt, stateRoot: stateRoot, parent: parent, root: pluginRoot(t)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := h.rt.Sweep(ctx); err != nil {
			t.Errorf("sweep at cleanup: %v", err)
		}
		h.rt.Close()
		os.RemoveAll(stateRoot)
		dirs, _ := cgroupDirs("/" + parent)
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
	})
	return h
}

// instance is a started probe and the host end of its control socket.
type instance struct {
	sandbox.Process
	id     string
	conn   *os.File
	rd     *bufio.Reader
	stderr *syncBuffer
}

var instanceSeq atomic.Int64

// spec returns a probe spec with a fresh id and control socket; the returned
// host end is the test's side.
func (h *harness) spec(t testing.TB) (*sandbox.Spec, *os.File) {
	t.Helper()
	host, plugin := socketpair(t)
	return &sandbox.Spec{
		ID:         fmt.Sprintf("probe-%d-%d", os.Getpid(), instanceSeq.Add(1)),
		Plugin:     "probe",
		Root:       h.root,
		Entrypoint: "probe",
		Env:        []string{"PATH=/"},
		Control:    plugin,
	}, host
}

func socketpair(t testing.TB) (host, plugin *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Only the host end is non-blocking (and so supports deadlines).
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "control-host"), os.NewFile(uintptr(fds[1]), "control-plugin")
}

// start starts a probe, after letting mutate adjust its spec.
func (h *harness) start(t testing.TB, mutate func(*sandbox.Spec)) *instance {
	t.Helper()
	spec, host := h.spec(t)
	if mutate != nil {
		mutate(spec)
	}
	stderr := &syncBuffer{}
	spec.Stderr = stderr
	p, err := h.rt.Start(context.Background(), spec)
	spec.Control.Close()
	if err != nil {
		host.Close()
		t.Fatalf("start: %v", err)
	}
	in := &instance{Process: p, id: spec.ID, conn: host, rd: bufio.NewReader(host), stderr: stderr}
	t.Cleanup(func() {
		host.Close()
		if err := p.Destroy(); err != nil {
			t.Errorf("destroy %s: %v", spec.ID, err)
		}
	})
	return in
}

// ask sends one command and returns the probe's answer, or an error if the
// probe does not answer (it died, or took longer than 10 s).
func (in *instance) ask(cmd string) (string, error) {
	_ = in.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(in.conn, cmd); err != nil {
		return "", err
	}
	line, err := in.rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func (in *instance) mustAsk(t testing.TB, cmd string) string {
	t.Helper()
	reply, err := in.ask(cmd)
	if err != nil {
		t.Fatalf("%q: no answer: %v (probe stderr: %q)", cmd, err, in.stderr.String())
	}
	return reply
}

func waitExit(t testing.TB, p sandbox.Process, within time.Duration) sandbox.Exit {
	t.Helper()
	select {
	case <-p.Done():
		return p.Wait()
	case <-time.After(within):
		t.Fatalf("instance still running after %s", within)
		return sandbox.Exit{}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestStartIdentity(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)

	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Fatalf("ping: got %q", got)
	}
	if got := in.mustAsk(t, "pid"); got != "ok 1" {
		t.Errorf("pid inside the sandbox: got %q, want ok 1", got)
	}
	status := in.mustAsk(t, "status")
	fields := map[string]string{}
	for _, f := range strings.Fields(strings.TrimPrefix(status, "ok ")) {
		k, v, _ := strings.Cut(f, "=")
		fields[k] = v
	}
	want := map[string]string{
		"uid_map":            fmt.Sprintf("0:%d:%d", DefaultUIDBase, DefaultUIDCount),
		"Uid":                "0:0:0:0",
		"CapInh":             "0000000000000000",
		"CapPrm":             "0000000000000000",
		"CapEff":             "0000000000000000",
		"CapBnd":             "0000000000000000",
		"CapAmb":             "0000000000000000",
		"NoNewPrivs":         "1",
		"Seccomp":            "2",
		"Max_open_files":     fmt.Sprintf("%d:%d", sandbox.DefaultLimits.OpenFiles, sandbox.DefaultLimits.OpenFiles),
		"Max_core_file_size": "0:0",
	}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("%s = %q, want %q (status %q)", k, fields[k], v, status)
		}
	}

	// Seen from the host, the plugin runs as the unprivileged mapped uid.
	hostStatus, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	wantUID := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", DefaultUIDBase, DefaultUIDBase, DefaultUIDBase, DefaultUIDBase)
	if !strings.Contains(string(hostStatus), wantUID) {
		t.Errorf("host view of pid %d lacks %q", in.Pid(), wantUID)
	}

	// Its namespaces all differ from the host's.
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net", "cgroup", "user"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", in.Pid(), ns))
		if err != nil || its == mine {
			t.Errorf("namespace %s: plugin %q, host %q (%v)", ns, its, mine, err)
		}
	}

	// The cgroup limits reached the kernel.
	lim := sandbox.DefaultLimits
	memDir := in.Process.(*process).memDir
	checks := map[string]string{
		filepath.Join(memDir, "memory.limit_in_bytes"): strconv.FormatInt(lim.MemoryBytes, 10),
	}
	dirs, _ := cgroupDirs(h.rt.cgroupPath(in.id))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pids.max")); err == nil {
			checks[filepath.Join(d, "pids.max")] = strconv.FormatInt(lim.Pids, 10)
		}
		if _, err := os.Stat(filepath.Join(d, "cpu.cfs_quota_us")); err == nil {
			checks[filepath.Join(d, "cpu.cfs_quota_us")] = strconv.FormatInt(int64(lim.CPU*cpuPeriod), 10)
		}
		if _, err := os.Stat(filepath.Join(d, "memory.memsw.limit_in_bytes")); err == nil {
			checks[filepath.Join(d, "memory.memsw.limit_in_bytes")] = strconv.FormatInt(lim.MemoryBytes, 10)
		}
	}
	if len(checks) < 3 {
		t.Errorf("found only %d cgroup limit files: %v", len(checks), checks)
	}
	for file, want := range checks {
		data, err := os.ReadFile(file)
		if got := strings.TrimSpace(string(data)); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", file, got, err, want)
		}
	}
}

func TestIsolation(t *testing.T) {
	h := newHarness(t)

	media := t.TempDir()
	if err := os.WriteFile(filepath.Join(media, "movie.txt"), []byte("granted"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(media, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()

	// A strict daemon umask must not make the skeleton unreadable for the
	// mapped uid.
	oldUmask := syscall.Umask(0o077)
	in := h.start(t, func(s *sandbox.Spec) {
		s.Limits.TmpBytes = 1 << 20
		s.Mounts = []sandbox.Mount{{Source: media, Target: "/media"}, {Source: media, Target: "/srv/deep/media"}}
	})
	syscall.Umask(oldUmask)

	denied := []string{
		"mount", "umount2", "unshare", "setns", "ptrace", "process_vm_readv", "bpf",
		"keyctl", "add_key", "request_key", "perf_event_open", "kexec_load",
		"kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
		"swapon", "swapoff", "pivot_root", "chroot", "open_by_handle_at", "userfaultfd",
		"io_uring_setup", "io_uring_enter", "io_uring_register", "personality-set",
		"sethostname", "setdomainname", "syslog", "acct", "settimeofday", "clock_settime",
		"clone-newuser", "clone-newnet", "socket-raw", "socket-packet", "socket-netlink",
		"socketpair-inet",
		"syncfs", // not dangerous, just not on the allowlist
	}
	tests := []struct {
		cmd, want string
	}{
		{"read /etc/shadow", "err ENOENT"},
		{"read /etc/passwd", "err ENOENT"},
		{"read /data.txt", `ok "plugin data"`},
		{"write /data.txt 1", "err EROFS"},
		{"write /probe 1", "err EROFS"},
		{"write /new-file 1", "err EROFS"},
		{"write /dev/new-file 1", "err EROFS"},
		{"write /proc/sys/kernel/hostname 1", "err EROFS"},
		{"write /tmp/fits 524288", "ok"},
		{"write /tmp/too-big 2097152", "err ENOSPC"},
		{"read /media/movie.txt", `ok "granted"`},
		{"read /srv/deep/media/movie.txt", `ok "granted"`},
		{"write /media/movie.txt 1", "err EROFS"},
		{"write /media/new 1", "err EROFS"},
		{"syscall clone3", "err ENOSYS"},
		{"syscall personality-query", "ok"},
		{"exec", "ok child ok"},
		{"syscall socket-tcp", "ok"},
		{"syscall socket-unix", "ok"},
		{"connect " + ln.Addr().String(), "err ECONNREFUSED"},
	}
	// Masked /proc files read as empty (those this kernel has).
	for _, p := range maskedPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			tests = append(tests, struct{ cmd, want string }{"read " + p, `ok ""`})
		}
	}
	for _, name := range denied {
		tests = append(tests, struct{ cmd, want string }{"syscall " + name, "err EPERM"})
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.cmd, "/", "_"), func(t *testing.T) {
			if got := in.mustAsk(t, tc.cmd); got != tc.want {
				t.Errorf("%q: got %q, want %q", tc.cmd, got, tc.want)
			}
		})
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("host listener accepted %d connection(s) from the sandbox", n)
	}
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Errorf("probe unwell after the isolation checks: %q", got)
	}
}

func TestMemoryLimitOOMKill(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, func(s *sandbox.Spec) { s.Limits.MemoryBytes = 32 << 20 })
	reply, err := in.ask("alloc 256")
	if err == nil {
		t.Fatalf("allocating 256 MiB under a 32 MiB limit answered %q", reply)
	}
	ex := waitExit(t, in, 10*time.Second)
	if !ex.OOMKilled || ex.Signal != syscall.SIGKILL {
		t.Errorf("exit = %+v (%s), want OOM-killed", ex, ex)
	}
	if ex.Success() {
		t.Error("an OOM-killed instance reports success")
	}
}

func TestKilledIsNotOOM(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)
	in.mustAsk(t, "ping")
	if err := in.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ex := waitExit(t, in, 5*time.Second)
	if ex.OOMKilled || ex.Signal != syscall.SIGKILL {
		t.Errorf("exit = %+v, want SIGKILL and not OOM", ex)
	}
	if err := in.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal after exit: %v, want os.ErrProcessDone", err)
	}
}

func TestPidsLimit(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, func(s *sandbox.Spec) { s.Limits.Pids = 32 })
	reply := in.mustAsk(t, "fork 1000")
	var forked int
	var errName string
	if _, err := fmt.Sscanf(reply, "ok forked=%d err=%s", &forked, &errName); err != nil {
		t.Fatalf("fork: %q", reply)
	}
	if errName != "EAGAIN" || forked >= 32 || forked == 0 {
		t.Errorf("fork bomb: forked %d then %s; want fewer than 32, then EAGAIN", forked, errName)
	}
	// The host is unaffected.
	if err := exec.Command("/usr/bin/true").Run(); err != nil {
		t.Errorf("host cannot fork after the fork bomb: %v", err)
	}
	dirs, _ := cgroupDirs(h.rt.cgroupPath(in.id))
	if err := in.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s remains after destroy", d)
		}
	}
}

func TestExitOnControlEOF(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)
	in.mustAsk(t, "ping")
	in.conn.Close()
	ex := waitExit(t, in, 5*time.Second)
	if !ex.Success() {
		t.Errorf("exit after EOF: %s, want code 0", ex)
	}
	if err := in.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := in.Destroy(); err != nil {
		t.Errorf("second destroy: %v", err)
	}
	for _, p := range []string{filepath.Join(h.stateRoot, in.id), h.rt.rootfsDir(in.id)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains after destroy (%v)", p, err)
		}
	}
}

func TestExitCode(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)
	_, _ = in.ask("exit 7")
	if ex := waitExit(t, in, 5*time.Second); ex.Code != 7 || ex.Signal != 0 || ex.OOMKilled {
		t.Errorf("exit = %+v, want code 7", ex)
	}
}

func TestStartRejects(t *testing.T) {
	h := newHarness(t)
	running := h.start(t, nil)

	noexec := t.TempDir()
	if err := os.WriteFile(filepath.Join(noexec, "probe"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	reserved := t.TempDir()
	if err := os.Mkdir(filepath.Join(reserved, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(reserved, "probe"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		mutate func(*sandbox.Spec)
		want   string
	}{
		{"duplicate id", func(s *sandbox.Spec) { s.ID = running.id }, "already running"},
		{"missing entrypoint", func(s *sandbox.Spec) { s.Entrypoint = "nope" }, "no such file"},
		{"entrypoint not executable by others", func(s *sandbox.Spec) { s.Root = noexec }, "world-executable"},
		{"reserved top-level name", func(s *sandbox.Spec) { s.Root = reserved }, `reserves`},
		{"mount over /proc", func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/usr", Target: "/proc/usr"}}
		}, "belong to the sandbox"},
		{"mount inside plugin files", func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/usr", Target: "/probe/usr"}}
		}, "plugin's own read-only files"},
		{"tiny memory", func(s *sandbox.Spec) { s.Limits.MemoryBytes = 1 << 20 }, "memory limit"},
		{"nested grants", func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/usr", Target: "/host"}, {Source: "/etc", Target: "/host/etc"}}
		}, "overlaps"},
		{"missing grant source", func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/nonexistent-grant", Target: "/media"}}
		}, "no such file"},
		{"bad id", func(s *sandbox.Spec) { s.ID = "Bad_ID" }, "id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, host := h.spec(t)
			defer host.Close()
			defer spec.Control.Close()
			tc.mutate(spec)
			p, err := h.rt.Start(context.Background(), spec)
			if err == nil {
				p.Destroy()
				t.Fatal("start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `plugin "probe"`) {
				t.Errorf("error %q does not name the plugin and say %q", err, tc.want)
			}
		})
	}
	if got := running.mustAsk(t, "ping"); got != "ok pong" {
		t.Errorf("running instance disturbed: %q", got)
	}
	entries, _ := os.ReadDir(filepath.Join(h.stateRoot, rootfsDirName))
	if len(entries) != 1 {
		t.Errorf("%d skeletons after failed starts, want 1", len(entries))
	}
}

func TestSignalTerm(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)
	in.mustAsk(t, "ping")
	if err := in.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A Go program is pid 1 here, and the kernel ignores default-action
	// signals for a namespace's init: Go's runtime handler exits with code 2.
	ex := waitExit(t, in, 5*time.Second)
	if ex.Success() || ex.Err != nil {
		t.Errorf("exit after SIGTERM: %+v", ex)
	}
	t.Logf("after SIGTERM the probe %s", ex)
}

func TestTypedNilOutput(t *testing.T) {
	h := newHarness(t)
	var nilFile *os.File
	in := h.start(t, func(s *sandbox.Spec) { s.Stdout = nilFile })
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Errorf("ping: %q", got)
	}
}

func TestConcurrentStarts(t *testing.T) {
	h := newHarness(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec, host := h.spec(t)
			defer host.Close()
			p, err := h.rt.Start(context.Background(), spec)
			spec.Control.Close()
			if err != nil {
				errs <- err
				return
			}
			in := &instance{Process: p, conn: host, rd: bufio.NewReader(host), stderr: &syncBuffer{}}
			if got, err := in.ask("ping"); err != nil || got != "ok pong" {
				errs <- fmt.Errorf("ping: %q %v", got, err)
			}
			if err := p.Destroy(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// runHelper is the "daemon" TestSweep kills: it starts one instance whose
// control socket it inherited at fd 3, prints its pid, and waits.
func runHelper() int {
	rt, err := New(Config{StateRoot: os.Getenv("HELPER_STATE_ROOT"), CgroupParent: os.Getenv("HELPER_CGROUP_PARENT")})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	p, err := rt.Start(context.Background(), &sandbox.Spec{
		ID:         os.Getenv("HELPER_ID"),
		Plugin:     "probe",
		Root:       os.Getenv("HELPER_PLUGIN_ROOT"),
		Entrypoint: "probe",
		Control:    os.NewFile(3, "control"),
	})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	// A second instance only prepared: its init waits for the go-ahead.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	pp, err := rt.Prepare(context.Background(), &sandbox.Spec{
		ID:         os.Getenv("HELPER_ID") + "-prepared",
		Plugin:     "probe",
		Root:       os.Getenv("HELPER_PLUGIN_ROOT"),
		Entrypoint: "probe",
		Control:    os.NewFile(uintptr(fds[1]), "control"),
	})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("started", p.Pid(), pp.Pid())
	time.Sleep(time.Hour)
	return 0
}

func TestSweep(t *testing.T) {
	h := newHarness(t)
	h.rt.Close() // the helper daemon takes over the state root
	host, plugin := socketpair(t)
	defer host.Close()
	id := fmt.Sprintf("orphan-%d", os.Getpid())

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1",
		"HELPER_STATE_ROOT="+h.stateRoot, "HELPER_CGROUP_PARENT="+h.parent,
		"HELPER_ID="+id, "HELPER_PLUGIN_ROOT="+h.root)
	cmd.ExtraFiles = []*os.File{plugin}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	plugin.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	var pid, preparedPid int
	if _, serr := fmt.Sscanf(line, "started %d %d", &pid, &preparedPid); err != nil || serr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper daemon: %q %v", line, err)
	}

	// The daemon dies without stopping its plugin, which keeps running.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	in := &instance{conn: host, rd: bufio.NewReader(host), stderr: &syncBuffer{}}
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Fatalf("orphaned plugin: %q", got)
	}
	cgDirs, _ := cgroupDirs(h.rt.cgroupPath(id))
	var existing []string
	for _, d := range cgDirs {
		if _, err := os.Stat(d); err == nil {
			existing = append(existing, d)
		}
	}
	if len(existing) == 0 {
		t.Fatal("orphan has no cgroup directories to sweep")
	}
	prepDirs, _ := cgroupDirs(h.rt.cgroupPath(id + "-prepared"))
	for _, d := range prepDirs {
		if _, err := os.Stat(d); err == nil {
			existing = append(existing, d)
		}
	}

	// A new daemon sweeps over the same state root.
	rt2, err := New(Config{StateRoot: h.stateRoot, CgroupParent: h.parent})
	if err != nil {
		t.Fatal(err)
	}
	h.rt = rt2
	start := time.Now()
	if err := rt2.Sweep(context.Background()); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	t.Logf("sweep took %s", time.Since(start))

	if reply, err := in.ask("ping"); err == nil {
		t.Errorf("swept plugin still answers: %q", reply)
	}
	if alive(pid) {
		t.Errorf("swept plugin pid %d still runs", pid)
	}
	if alive(preparedPid) {
		t.Errorf("swept prepared init pid %d still runs", preparedPid)
	}
	prepID := id + "-prepared"
	for _, p := range append(existing, filepath.Join(h.stateRoot, id), h.rt.rootfsDir(id),
		filepath.Join(h.stateRoot, prepID), h.rt.rootfsDir(prepID)) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains after sweep (%v)", p, err)
		}
	}
	// Sweeping again finds nothing to do.
	if err := rt2.Sweep(context.Background()); err != nil {
		t.Errorf("second sweep: %v", err)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// snapshot counts what a start/stop cycle could leak.
type snapshot struct {
	cgroups, states, skeletons, mounts, zombies, fds, goroutines int
	// foreignThreads counts this process's threads that are not in its
	// initial mount namespace (a setns that was never undone).
	foreignThreads int
}

func takeSnapshot(t testing.TB, h *harness) snapshot {
	t.Helper()
	var s snapshot
	mps, err := cgroupMountpoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		entries, _ := os.ReadDir(filepath.Join(mp, h.parent))
		for _, e := range entries {
			if e.IsDir() {
				s.cgroups++
			}
		}
	}
	entries, _ := os.ReadDir(h.stateRoot)
	for _, e := range entries {
		if instanceName.MatchString(e.Name()) {
			s.states++
		}
	}
	entries, _ = os.ReadDir(filepath.Join(h.stateRoot, rootfsDirName))
	s.skeletons = len(entries)
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	s.mounts = bytes.Count(mi, []byte("\n"))
	s.zombies = countZombieChildren()
	fds, _ := os.ReadDir("/proc/self/fd")
	s.fds = len(fds)
	s.goroutines = runtime.NumGoroutine()
	s.foreignThreads = foreignThreads(t)
	return s
}

func foreignThreads(t testing.TB) int {
	t.Helper()
	host := initialMountNS
	tasks, _ := os.ReadDir("/proc/self/task")
	n := 0
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/mnt")
		if err == nil && ns != host {
			n++
		}
	}
	return n
}

func countZombieChildren() int {
	procs, _ := os.ReadDir("/proc")
	me := os.Getpid()
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(me) {
			n++
		}
	}
	return n
}

func TestNoLeaks(t *testing.T) {
	h := newHarness(t)
	cycle := func(i int) {
		spec, host := h.spec(t)
		spec.Stderr = &syncBuffer{} // a writer that is not a file: libcontainer copies through a pipe
		p, err := h.rt.Start(context.Background(), spec)
		spec.Control.Close()
		if err != nil {
			host.Close()
			t.Fatalf("cycle %d: %v", i, err)
		}
		in := &instance{Process: p, conn: host, rd: bufio.NewReader(host), stderr: &syncBuffer{}}
		if got := in.mustAsk(t, "ping"); got != "ok pong" {
			t.Fatalf("cycle %d: ping: %q", i, got)
		}
		if i%2 == 0 {
			host.Close() // the plugin exits on its own
			waitExit(t, p, 5*time.Second)
		}
		if err := p.Destroy(); err != nil {
			t.Fatalf("cycle %d: destroy: %v", i, err)
		}
		host.Close()
	}
	cycle(-1) // warm up lazily initialised state
	before := takeSnapshot(t, h)
	const cycles = 100
	start := time.Now()
	for i := range cycles {
		cycle(i)
	}
	t.Logf("%d start/stop cycles in %s", cycles, time.Since(start))
	var after snapshot
	for deadline := time.Now().Add(3 * time.Second); ; {
		after = takeSnapshot(t, h)
		if after.goroutines <= before.goroutines || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if after.cgroups > before.cgroups || after.states > before.states || after.skeletons > before.skeletons ||
		after.mounts > before.mounts || after.zombies > before.zombies || after.fds > before.fds ||
		after.goroutines > before.goroutines || after.foreignThreads > 0 {
		t.Errorf("leak after %d cycles:\nbefore %+v\nafter  %+v", cycles, before, after)
	} else {
		t.Logf("before %+v\nafter  %+v", before, after)
	}
	if before.cgroups != 0 || before.states != 0 || before.skeletons != 0 {
		t.Errorf("leftovers with no instance running: %+v", before)
	}
}

func TestPrepare(t *testing.T) {
	h := newHarness(t)

	// Prepared, then started.
	spec, host := h.spec(t)
	defer host.Close()
	pp, err := h.rt.Prepare(context.Background(), spec)
	spec.Control.Close()
	if err != nil {
		t.Fatal(err)
	}
	if pp.Pid() <= 0 || !alive(pp.Pid()) {
		t.Fatalf("prepared init pid %d not running", pp.Pid())
	}
	p, err := pp.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{Process: p, conn: host, rd: bufio.NewReader(host), stderr: &syncBuffer{}}
	if got := in.mustAsk(t, "pid"); got != "ok 1" {
		t.Errorf("pid: %q", got)
	}
	if _, err := pp.Start(context.Background()); err == nil {
		t.Error("a prepared instance started twice")
	}
	if err := pp.Discard(); err != nil {
		t.Errorf("discard after start: %v", err)
	}
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Errorf("discard after start disturbed the instance: %q", got)
	}
	if err := p.Destroy(); err != nil {
		t.Fatal(err)
	}

	// Prepared, then discarded: everything goes and the id is free again.
	spec, host2 := h.spec(t)
	defer host2.Close()
	pp, err = h.rt.Prepare(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	pid := pp.Pid()
	if err := pp.Discard(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("discarded init %d still runs", pid)
	}
	for _, path := range []string{filepath.Join(h.stateRoot, spec.ID), h.rt.rootfsDir(spec.ID)} {
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains after discard (%v)", path, err)
		}
	}
	p, err = h.rt.Start(context.Background(), spec)
	spec.Control.Close()
	if err != nil {
		t.Fatalf("start with the discarded id: %v", err)
	}
	p.Destroy()

	// A cancelled context stops a prepared start and cleans up.
	spec, host3 := h.spec(t)
	defer host3.Close()
	defer spec.Control.Close()
	pp, err = h.rt.Prepare(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := pp.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("start with a cancelled context: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(h.stateRoot, spec.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state remains after a cancelled start (%v)", err)
	}
}

// TestSweepWithoutState covers what a daemon that died half-way through a
// start leaves: a skeleton with no container state, and a cgroup with a
// running process but no state.
func TestSweepWithoutState(t *testing.T) {
	h := newHarness(t)
	skel := h.rt.rootfsDir("stale-skeleton")
	if err := os.MkdirAll(filepath.Join(skel, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("/usr/bin/sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { sleeper.Wait(); close(reaped) }()
	defer func() { sleeper.Process.Kill(); <-reaped }()

	pidsMount := ""
	mps, _ := cgroupMountpoints()
	for _, mp := range mps {
		if filepath.Base(mp) == "pids" {
			pidsMount = mp
		}
	}
	if pidsMount == "" {
		t.Skip("no cgroup v1 pids hierarchy")
	}
	cg := filepath.Join(pidsMount, h.rt.cgroupPath("stale-cgroup"))
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}

	if err := h.rt.Sweep(context.Background()); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	select {
	case <-reaped:
	case <-time.After(5 * time.Second):
		t.Error("the process in the stale cgroup survived the sweep")
	}
	for _, p := range []string{skel, cg} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains after sweep (%v)", p, err)
		}
	}
}

func TestStateRootLock(t *testing.T) {
	h := newHarness(t)
	if _, err := New(Config{StateRoot: h.stateRoot, CgroupParent: h.parent}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second runtime on a state root in use: %v", err)
	}
	if err := h.rt.Close(); err != nil {
		t.Fatal(err)
	}
	spec, host := h.spec(t)
	defer host.Close()
	defer spec.Control.Close()
	if _, err := h.rt.Start(context.Background(), spec); !errors.Is(err, errClosed) {
		t.Errorf("start on a closed runtime: %v", err)
	}
	rt2, err := New(Config{StateRoot: h.stateRoot, CgroupParent: h.parent})
	if err != nil {
		t.Fatalf("runtime after the first was closed: %v", err)
	}
	h.rt = rt2
}
