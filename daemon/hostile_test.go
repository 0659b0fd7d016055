//go:build linux

package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/escapetest"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// The hostile plugin's grant: small limits the bombs run into.
const (
	hostileMemory    = 64 * manifest.MiB
	hostilePids      = 64
	hostileCPU       = 0.5
	hostileTmp       = 4 * manifest.MiB
	hostileOpenFiles = 128
)

// hostileManifest installs daemon/testdata/hostile with one fail-closed
// request hook on /hostile and the small limits above.
func hostileManifest() string {
	return `name = "hostile"
version = "1.0.0"
entrypoint = "hostile"
` + hooks("request", "GET", "/hostile", "10s", "fail-closed", 0) + fmt.Sprintf(`
[permissions]
memory = %q
pids = %d
cpu = %g
tmp = %q
open_files = %d
`, "64MiB", hostilePids, hostileCPU, "4MiB", hostileOpenFiles)
}

// hostileDir makes an installable directory holding the hostile plugin.
func hostileDir(t testing.TB) string {
	t.Helper()
	bin := buildBin(t, "./daemon/testdata/hostile", true)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte(hostileManifest()), 0o644); err != nil {
		t.Fatal(err)
	}
	copyFile(t, bin, filepath.Join(dir, "hostile"), 0o755)
	os.Chmod(dir, 0o755)
	return dir
}

// escapeReport is the hostile plugin's report on one attempt.
type escapeReport struct {
	blocked bool
	errno   string
	detail  string // "blocked: ..." or "ESCAPED: ..."
}

// runAttempt asks the hostile plugin to make one attempt. It returns the
// dispatch result when the plugin did not answer with a report.
func runAttempt(s *host.Session, name, arg string) (escapeReport, *host.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q := url.Values{"attempt": {name}, "arg": {arg}}
	res, err := s.Dispatch(ctx, host.PhaseRequest, get("/hostile?"+q.Encode()), nil)
	if err != nil {
		return escapeReport{}, nil, err
	}
	if res.Kind != host.Respond || res.Response.Status != 200 || res.Response.Header.Get("X-Escape-Attempt") != name {
		return escapeReport{}, res, fmt.Errorf("no report: %s", describeResult(res))
	}
	h := res.Response.Header
	return escapeReport{blocked: h.Get("X-Escape-Blocked") == "true", errno: h.Get("X-Escape-Errno"), detail: string(res.Response.Body)}, res, nil
}

func describeResult(res *host.Result) string {
	switch {
	case res.Kind == host.Respond:
		return fmt.Sprintf("answered %d %q", res.Response.Status, res.Response.Body)
	case res.Failure != nil:
		return fmt.Sprintf("failed (%v): %s", res.Failure.Kind, res.Failure.Message)
	}
	return fmt.Sprintf("%+v", res)
}

// TestHostilePlugin installs a plugin that tries to escape the sandbox and
// abuse the host in every way package escapetest knows, next to a
// well-behaved plugin, and checks that each attempt is blocked or contained,
// that the memory bomb ends in an OOM kill the daemon reports and recovers
// from, and that the daemon and the other plugin keep answering throughout.
func TestHostilePlugin(t *testing.T) {
	began := time.Now()
	rt := testRuntime(t)
	if !rt.Sandboxed() {
		// In CI testRuntime has already failed the test.
		t.Skipf("the hostile-plugin suite needs the container sandbox; runtime %q does not sandbox, and the suite's bombs are real", rt.Name())
	}
	td := startDaemon(t, rt, fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("goodplug", nil, hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-closed", 0))))
	td.install(t, hostileDir(t))
	good := waitState(t, td.ctl, "goodplug", 30*time.Second, "running", running)
	hostile := waitState(t, td.ctl, "hostile", 30*time.Second, "running", running)
	if g := hostile.Grant; g.Memory != hostileMemory || g.Pids != hostilePids || g.CPU != hostileCPU || g.Tmp != hostileTmp || g.OpenFiles != hostileOpenFiles {
		t.Fatalf("hostile plugin's grant = %+v, want the manifest's small limits", g)
	}
	if !hostile.Sandboxed {
		t.Fatalf("hostile plugin runs unsandboxed: %+v", hostile)
	}
	s := dial(t, td.socket)

	// A host service on loopback the plugin tries to reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var acceptWG sync.WaitGroup
	acceptWG.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	})
	defer acceptWG.Wait()
	defer ln.Close()

	goodAnswers := func(t *testing.T) {
		t.Helper()
		res := dispatch(t, s, host.PhaseRequest, get("/api/v1/media/7"), nil)
		if res.Kind != host.MutateRequest || strings.Join(res.RequestMutation.Header.Values("X-Test-Request"), ",") != "goodplug" {
			t.Errorf("the well-behaved plugin answered wrongly: %s", describeResult(res))
		}
	}

	// Each attempt, with the argument it needs and what must stop it:
	// errno is the errno the plugin must report ("" when several calls
	// fail in different ways), check any further condition.
	tests := []struct {
		name, arg, errno string
		check            func(t *testing.T, o escapeReport)
	}{
		{name: "read-shadow", errno: "ENOENT"},
		{name: "read-host-files", errno: "ENOENT"},
		{name: "read-state-dir", arg: td.state, errno: "ENOENT"},
		{name: "read-plugin-files", arg: good.Dir, errno: "ENOENT"},
		{name: "write-outside-tmp"},
		{name: "write-sys"},
		{name: "read-kernel-log"},
		{name: "mknod-device", errno: "EPERM"},
		{name: "connect-loopback", arg: ln.Addr().String(), errno: "ECONNREFUSED"},
		{name: "connect-control-socket", arg: td.socket, errno: "ENOENT"},
		{name: "connect-control-socket", arg: td.control, errno: "ENOENT"}, // the operators' socket too
		{name: "raw-socket", errno: "EPERM"},
		{name: "packet-socket", errno: "EPERM"},
		{name: "netlink-socket", errno: "EPERM"},
		{name: "mount", errno: "EPERM"},
		{name: "umount", errno: "EPERM"},
		{name: "unshare", errno: "EPERM"},
		{name: "clone-newuser", errno: "EPERM"},
		{name: "setns", errno: "EPERM"},
		{name: "ptrace", errno: "EPERM"},
		{name: "process-vm-readv", errno: "EPERM"},
		{name: "bpf", errno: "EPERM"},
		{name: "keyctl", errno: "EPERM"},
		{name: "add-key", errno: "EPERM"},
		{name: "perf-event-open", errno: "EPERM"},
		{name: "kexec-load", errno: "EPERM"},
		{name: "init-module", errno: "EPERM"},
		{name: "reboot", errno: "EPERM"},
		{name: "pivot-root", errno: "EPERM"},
		{name: "chroot", errno: "EPERM"},
		{name: "open-by-handle-at", errno: "EPERM"},
		{name: "userfaultfd", errno: "EPERM"},
		{name: "io-uring-setup", errno: "EPERM"},
		{name: "personality", errno: "EPERM"},
		{name: "sethostname", errno: "EPERM"},
		{name: "setdomainname", errno: "EPERM"},
		{name: "settimeofday", errno: "EPERM"},
		{name: "raise-rlimit", errno: "EPERM"},
		{name: "kill-daemon", arg: strconv.Itoa(os.Getpid()), errno: "ESRCH"},
		{name: "kill-host-init"},
		{name: "fill-tmp", errno: "ENOSPC", check: func(t *testing.T, o escapeReport) {
			if want := fmt.Sprintf("(%d bytes big)", hostileTmp); !strings.Contains(o.detail, want) {
				t.Errorf("fill-tmp: /tmp is not the granted %d bytes: %s", hostileTmp, o.detail)
			}
		}},
		{name: "fill-tmp-inodes", errno: "ENOSPC"},
		{name: "fd-exhaustion", errno: "EMFILE", check: func(t *testing.T, o escapeReport) {
			if want := fmt.Sprintf("RLIMIT_NOFILE %d)", hostileOpenFiles); !strings.Contains(o.detail, want) {
				t.Errorf("fd-exhaustion: the limit is not the granted %d: %s", hostileOpenFiles, o.detail)
			}
		}},
		{name: "fork-bomb", errno: "EAGAIN", check: func(t *testing.T, o escapeReport) {
			var n int
			if _, err := fmt.Sscanf(o.detail, "blocked: forked %d children", &n); err != nil || n == 0 || n >= hostilePids {
				t.Errorf("fork-bomb: want between 1 and %d children before EAGAIN: %s", hostilePids-1, o.detail)
			}
		}},
		// After the fork bomb: its children must be gone.
		{name: "kill-all", errno: "ESRCH"},
		{name: "see-host-processes"},
	}

	// Every attempt the sandbox must stop is in the table (the memory bomb
	// ends the plugin and has a subtest of its own, cpu-spin too).
	listed := map[string]bool{"memory-bomb": true, "cpu-spin": true}
	for _, tc := range tests {
		listed[tc.name] = true
	}
	for _, a := range escapetest.All() {
		if !listed[a.Name] {
			t.Errorf("escapetest attempt %q (%s) is not in this suite", a.Name, a.Description)
		}
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, _, err := runAttempt(s, tc.name, tc.arg)
			if err != nil {
				t.Fatalf("attempt %s: %v", tc.name, err)
			}
			t.Logf("%s: %s", tc.name, o.detail)
			if !o.blocked {
				t.Errorf("attempt %s was not stopped: %s", tc.name, o.detail)
			}
			if tc.errno != "" && o.errno != tc.errno {
				t.Errorf("attempt %s: errno %q, want %q: %s", tc.name, o.errno, tc.errno, o.detail)
			}
			if tc.check != nil {
				tc.check(t, o)
			}
		})
	}

	t.Run("cpu-spin", func(t *testing.T) {
		cg := cpuCgroupDir(t, hostile.PID)
		before := cpuStat(t, cg, "nr_throttled")
		type report struct {
			o   escapeReport
			err error
		}
		done := make(chan report, 1)
		go func() {
			o, _, err := runAttempt(s, "cpu-spin", "2s")
			done <- report{o, err}
		}()
		// While it spins, the daemon and the other plugin answer promptly.
		var r report
		checks := 0
	spin:
		for {
			select {
			case r = <-done:
				break spin
			default:
			}
			start := time.Now()
			goodAnswers(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := td.ctl.Status(ctx)
			cancel()
			if err != nil {
				t.Errorf("daemon status during the spin: %v", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("during the spin a hook and a status call took %s", took)
			}
			checks++
			time.Sleep(100 * time.Millisecond) // pacing, not an assertion
		}
		if r.err != nil {
			t.Fatalf("cpu-spin: %v", r.err)
		}
		t.Logf("cpu-spin: %s (%d responsiveness checks meanwhile)", r.o.detail, checks)
		if !r.o.blocked {
			t.Errorf("cpu-spin was not contained: %s", r.o.detail)
		}
		var n int
		var used, cores float64
		if _, err := fmt.Sscanf(r.o.detail, "blocked: spun %d goroutines for", &n); err != nil {
			t.Errorf("cpu-spin report unreadable: %s", r.o.detail)
		}
		if i := strings.Index(r.o.detail, ": used "); i < 0 {
			t.Errorf("cpu-spin report unreadable: %s", r.o.detail)
		} else if _, err := fmt.Sscanf(r.o.detail[i:], ": used %f CPU-seconds, %f cores", &used, &cores); err != nil || cores > hostileCPU+0.2 {
			t.Errorf("cpu-spin took %.2f cores, over the %.1f-core quota: %s", cores, hostileCPU, r.o.detail)
		}
		if after := cpuStat(t, cg, "nr_throttled"); after <= before {
			t.Errorf("the hostile plugin's cgroup %s was not throttled (nr_throttled %d -> %d)", cg, before, after)
		}
	})

	if n := accepted.Load(); n != 0 {
		t.Errorf("the host's loopback listener accepted %d connection(s) from the hostile plugin", n)
	}
	// The attempts were contained without ending the plugin.
	if st := waitState(t, td.ctl, "hostile", 5*time.Second, "running", running); st.PID != hostile.PID || st.Restarts != 0 {
		t.Errorf("the hostile plugin was restarted by the attempts before the memory bomb: %+v", st)
	}
	t.Run("well-behaved plugin still answers", func(t *testing.T) {
		goodAnswers(t)
		if st := waitState(t, td.ctl, "goodplug", 5*time.Second, "running", running); st.PID != good.PID || st.Restarts != 0 {
			t.Errorf("the well-behaved plugin was disturbed: %+v", st)
		}
	})

	t.Run("memory-bomb", func(t *testing.T) {
		const oom = "was killed by the OOM killer"
		start := time.Now()
		o, res, err := runAttempt(s, "memory-bomb", "")
		took := time.Since(start)
		switch {
		case err == nil:
			t.Fatalf("the memory bomb was not stopped: %s", o.detail)
		case res == nil:
			t.Fatalf("dispatch during the memory bomb failed instead of reporting the plugin's failure: %v", err)
		case res.Kind != host.FailClosed || res.Failure.Plugin != "hostile":
			t.Fatalf("memory bomb: want a fail-closed failure of plugin hostile, got %s", describeResult(res))
		}
		if took > 10*time.Second {
			t.Errorf("the failed hook took %s to report", took)
		}
		t.Logf("memory-bomb: the hook %s after %s", describeResult(res), took.Round(time.Millisecond))

		down := waitState(t, td.ctl, "hostile", 15*time.Second, "the OOM kill to be reported", func(st *host.PluginStatus) bool {
			return st.Restarts >= 1 && (strings.Contains(st.LastExit, oom) || strings.Contains(st.Detail, oom))
		})
		t.Logf("after the memory bomb: state %s, last exit %q, detail %q", down.State, down.LastExit, down.Detail)
		if !strings.Contains(down.LastExit, "the plugin "+oom+" (memory limit reached)") {
			t.Errorf("last exit %q does not say the OOM killer ended the plugin", down.LastExit)
		}
		back := waitState(t, td.ctl, "hostile", 20*time.Second, "restarted", func(st *host.PluginStatus) bool {
			return st.State == StateRunning && st.PID != hostile.PID
		})
		if back.Restarts != 1 {
			t.Errorf("restarts = %d, want 1 (the memory bomb's OOM kill)", back.Restarts)
		}
		logs, err := td.ctl.Logs(context.Background(), "hostile", 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !containsLine(logs, oom) {
			t.Errorf("the plugin's log does not record the OOM kill: %+v", logs)
		}
		o, _, err = runAttempt(s, "read-shadow", "")
		if err != nil || !o.blocked {
			t.Errorf("the restarted hostile plugin: %+v %v", o, err)
		}
	})

	t.Run("daemon and well-behaved plugin after everything", func(t *testing.T) {
		goodAnswers(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := td.ctl.Status(ctx)
		if err != nil || st.Plugins != 2 {
			t.Fatalf("daemon status: %+v %v", st, err)
		}
		list, err := td.ctl.List(ctx)
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		for _, p := range list {
			if p.State != StateRunning {
				t.Errorf("plugin %s is %s (%s)", p.Name, p.State, p.Detail)
			}
		}
	})
	t.Logf("hostile-plugin suite took %s", time.Since(began).Round(time.Millisecond))
}

// cpuCgroupDir is the host directory of the cgroup pid is in for the cpu
// controller (cgroup v1), or of its unified cgroup (v2).
func cpuCgroupDir(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var v1, v2 string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			v2 = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "cpu" {
				v1 = parts[2]
			}
		}
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	var v2dir string
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(f) || len(f) < 5 {
			continue
		}
		root, mnt, fstype := f[3], f[4], f[sep+1]
		switch {
		case fstype == "cgroup" && v1 != "":
			for _, o := range strings.Split(f[sep+3], ",") {
				if o == "cpu" {
					return filepath.Join(mnt, strings.TrimPrefix(v1, root))
				}
			}
		case fstype == "cgroup2" && v2 != "" && v2dir == "":
			v2dir = filepath.Join(mnt, strings.TrimPrefix(v2, root))
		}
	}
	if v2dir == "" {
		t.Fatalf("no cpu cgroup for pid %d (%q)", pid, data)
	}
	return v2dir
}

// cpuStat reads one counter of a cgroup's cpu.stat.
func cpuStat(t *testing.T, dir, key string) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("%s/cpu.stat: %q", dir, line)
			}
			return n
		}
	}
	t.Fatalf("%s/cpu.stat has no %s", dir, key)
	return 0
}
