package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/bench/internal/hookwire"
	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sandbox/container"
)

// launcher readies one start of the fdecho probe with ctl as its fd 3,
// untimed. start is the timed part; stop tears the instance down, untimed.
type launcher func(ctl *os.File) (start func() error, stop func() error, err error)

// timeSpawns starts the probe warm+n times and returns the n timed
// durations, sorted: from just before start until "ok pong" arrives on the
// control socket.
func timeSpawns(ctx context.Context, warm, n int, launch launcher) ([]time.Duration, error) {
	var out []time.Duration
	for i := range warm + n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := spawnOnce(launch)
		if err != nil {
			return nil, err
		}
		if i >= warm {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out, nil
}

func spawnOnce(launch launcher) (time.Duration, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	unix.SetNonblock(fds[0], true) // the host end supports deadlines
	ours, theirs := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control-plugin")
	defer ours.Close()
	start, stop, err := launch(theirs)
	if err != nil {
		theirs.Close()
		return 0, err
	}
	rd := bufio.NewReader(ours)
	ours.SetDeadline(time.Now().Add(20 * time.Second))

	t0 := time.Now()
	err = start()
	var line string
	if err == nil {
		if _, err = io.WriteString(ours, "ping\n"); err == nil {
			line, err = rd.ReadString('\n')
		}
	}
	d := time.Since(t0)
	theirs.Close() // the child (or its sandbox) holds its own copy

	ours.Close() // EOF: the probe exits
	if serr := stop(); err == nil {
		err = serr
	}
	if err == nil && line != "ok pong\n" {
		err = fmt.Errorf("probe answered %q", line)
	}
	return d, err
}

// execLauncher starts name with args as a child process.
func execLauncher(name string, args ...string) launcher {
	return func(ctl *os.File) (func() error, func() error, error) {
		cmd := exec.Command(name, args...)
		cmd.ExtraFiles = []*os.File{ctl} // fd 3
		var stderr syncBuffer
		cmd.Stderr = &stderr
		stop := func() error {
			if cmd.Process == nil {
				return nil
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					return fmt.Errorf("%s: %v: %s", filepath.Base(name), err, stderr.Tail(500))
				}
				return nil
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
				return fmt.Errorf("%s did not exit on EOF: %s", filepath.Base(name), stderr.Tail(500))
			}
		}
		return cmd.Start, stop, nil
	}
}

// bwrapArgs run the probe under bubblewrap with isolation comparable to the
// container runtime's: every namespace bwrap can unshare (user, ipc, pid,
// net, uts, cgroup), the probe's directory read-only as /, proc, a minimal
// /dev, a tmpfs /tmp, no capabilities, killed with its parent. bwrap sets
// up no cgroups and no seccomp filter here.
func bwrapArgs(root string) []string {
	return []string{
		"--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
		"--ro-bind", root, "/",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
		"--chdir", "/", "--clearenv", "--setenv", "HOME", "/tmp",
		"/fdecho",
	}
}

var spawnSeq atomic.Int64

// containerLauncher times Runtime.Start, or with prepared, Prepare untimed
// and then Prepared.Start timed: the pre-started sandbox path.
func containerLauncher(rt *container.Runtime, root string, prepared bool) launcher {
	return func(ctl *os.File) (func() error, func() error, error) {
		spec := &sandbox.Spec{
			ID:         fmt.Sprintf("bench-%d-%d", os.Getpid(), spawnSeq.Add(1)),
			Plugin:     "fdecho",
			Root:       root,
			Entrypoint: "fdecho",
			Control:    ctl,
		}
		var p sandbox.Process
		stop := func() error {
			if p == nil {
				return nil
			}
			return p.Destroy()
		}
		if !prepared {
			return func() (err error) {
				p, err = rt.Start(context.Background(), spec)
				return err
			}, stop, nil
		}
		pp, err := rt.Prepare(context.Background(), spec)
		if err != nil {
			return nil, nil, err
		}
		return func() (err error) {
			p, err = pp.Start(context.Background())
			return err
		}, stop, nil
	}
}

// newContainerRuntime makes a container runtime with its own state root on
// /run and its own cgroup parent; cleanup removes all of it.
func newContainerRuntime(tag string) (*container.Runtime, func(), error) {
	stateRoot, err := os.MkdirTemp("/run", "dimplugd-bench-")
	if err != nil {
		return nil, nil, err
	}
	parent := fmt.Sprintf("dimplugd-bench-%d-%s", os.Getpid(), tag)
	rt, err := container.New(container.Config{StateRoot: stateRoot, CgroupParent: parent})
	if err != nil {
		os.RemoveAll(stateRoot)
		return nil, nil, err
	}
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rt.Sweep(ctx)
		rt.Close()
		os.RemoveAll(stateRoot)
		removeCgroups(parent)
	}
	return rt, cleanup, nil
}

// goPluginClient configures a go-plugin client for the goplug binary, with
// go-plugin's defaults (gRPC, no AutoMTLS) and its logging silenced.
func goPluginClient(bin string) (*goplugin.Client, *exec.Cmd) {
	cmd := exec.Command(bin)
	return goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  hookwire.Handshake,
		Plugins:          goplugin.PluginSet{hookwire.PluginName: &hookwire.Plugin{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
	}), cmd
}

// dispenseHooks connects to a started go-plugin client's plugin.
func dispenseHooks(c *goplugin.Client) (hookwire.Hooks, error) {
	rpc, err := c.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpc.Dispense(hookwire.PluginName)
	if err != nil {
		return nil, err
	}
	return raw.(hookwire.Hooks), nil
}

func runSpawn(ctx context.Context, e *env) ([]*Table, error) {
	n, warm := e.quick(3, 40), e.quick(1, 3)
	nDaemon := e.quick(3, 30)

	// The probe's directory: bwrap binds it as / (with mount points for
	// proc, dev and tmp); the container runtime binds its entries into its
	// own skeleton, which provides those itself.
	bwRoot := filepath.Join(e.dir, "bwrap-root")
	ctRoot := filepath.Join(e.dir, "ct-root")
	for _, d := range []string{bwRoot, ctRoot, filepath.Join(bwRoot, "proc"), filepath.Join(bwRoot, "dev"), filepath.Join(bwRoot, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{bwRoot, ctRoot} {
		if err := copyFile(e.bins["fdecho"], filepath.Join(d, "fdecho"), 0o755); err != nil {
			return nil, err
		}
	}

	t := &Table{
		Title: fmt.Sprintf("spawn: process start → first answer on fd 3 (N=%d each after %d warm-up; dimplugd N=%d)", n, warm, nDaemon),
		Label: "how the plugin starts",
		Cols:  []Col{{Name: "p50 ms", Format: "%.1f", Unit: "ms"}, {Name: "p90 ms", Format: "%.1f", Unit: "ms"}, {Name: "p50 × bwrap", Format: "%.2f", Optional: true}},
	}
	type result struct {
		name string
		ds   []time.Duration
	}
	var results []result
	var bwrapP50 = math.NaN()
	measure := func(name string, launch launcher) error {
		e.progress("spawn: %s", name)
		ds, err := timeSpawns(ctx, warm, n, launch)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, result{name, ds})
		return nil
	}
	var errs []error
	skipped := map[string]string{}

	const (
		rowExec     = "exec, static Go binary, no sandbox"
		rowBwrap    = "bwrap --unshare-all, ro /, proc, dev, tmpfs, cap-drop ALL"
		rowCold     = "container Runtime.Start (cold)"
		rowPrepared = "container Prepared.Start (pre-started sandbox)"
		rowDaemon   = "dimplugd serve: enable → running (media-badge)"
		rowGoPlugin = "go-plugin v1.8.0: launch → first call (no sandbox)"
	)
	t.Cols[2].Ratio = &Ratio{OfCol: 0, Base: rowBwrap, BaseCol: 0}
	if err := measure(rowExec, execLauncher(filepath.Join(ctRoot, "fdecho"))); err != nil {
		errs = append(errs, err)
	}
	if _, err := exec.LookPath("bwrap"); err != nil {
		skipped[rowBwrap] = "bwrap not installed (apt-get install bubblewrap)"
	} else if err := measure(rowBwrap, execLauncher("bwrap", bwrapArgs(bwRoot)...)); err != nil {
		errs = append(errs, err)
	}
	if e.ctErr != nil {
		skipped[rowCold], skipped[rowPrepared] = e.ctErr.Error(), e.ctErr.Error()
	} else {
		rt, cleanup, err := newContainerRuntime("spawn")
		if err != nil {
			errs = append(errs, err)
		} else {
			if err := measure(rowCold, containerLauncher(rt, ctRoot, false)); err != nil {
				errs = append(errs, err)
			}
			if err := measure(rowPrepared, containerLauncher(rt, ctRoot, true)); err != nil {
				errs = append(errs, err)
			}
			cleanup()
		}
	}

	// The whole daemon path, through the control API of a real daemon.
	e.progress("spawn: %s", rowDaemon)
	mem := &Table{
		Title: "idle memory: VmRSS of the plugin process after 1 s idle",
		Label: "plugin",
		Cols: []Col{{Name: "RSS MiB", Format: "%.1f", Unit: "MiB"},
			{Name: "× target 8 MiB", Format: "%.2f", Ratio: &Ratio{OfCol: 0, BaseName: "target 8 MiB", BaseValue: 8}},
			{Name: "× go-plugin 13.9 MiB", Format: "%.2f", Ratio: &Ratio{OfCol: 0, BaseName: "go-plugin 13.9 MiB (ROADMAP.md)", BaseValue: 13.9}}},
	}
	var parts daemonParts
	daemonDs, badgePID, stopDaemon, err := daemonSpawns(ctx, e, warm, nDaemon, &parts)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", rowDaemon, err))
	} else {
		results = append(results, result{rowDaemon, daemonDs})
		defer stopDaemon()
	}

	e.progress("spawn: %s", rowGoPlugin)
	gpDs, err := goPluginLaunches(ctx, e.bins["goplug"], warm, n)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", rowGoPlugin, err))
	} else {
		results = append(results, result{rowGoPlugin, gpDs})
	}

	for _, r := range results {
		if r.name == rowBwrap {
			bwrapP50 = ms(pct(r.ds, 0.5))
		}
	}
	sandboxedRatios := map[string]float64{}
	for _, name := range []string{rowExec, rowBwrap, rowCold, rowPrepared, rowDaemon, rowGoPlugin} {
		if why, ok := skipped[name]; ok {
			t.skip(name, why)
			continue
		}
		for _, r := range results {
			if r.name == name {
				p50 := ms(pct(r.ds, 0.5))
				label := name
				if name == rowDaemon && e.ctErr != nil {
					label += " [UNSANDBOXED]"
				}
				t.add(label, p50, ms(pct(r.ds, 0.9)), ratio(p50, bwrapP50))
				sandboxedRatios[name] = ratio(p50, bwrapP50)
			}
		}
	}
	t.note("Target: a sandboxed plugin is ready within 1.2× bubblewrap's time. Measured: cold %s, pre-started %s, through the daemon %s.",
		verdict(sandboxedRatios[rowCold], 1.2), verdict(sandboxedRatios[rowPrepared], 1.2), verdict(sandboxedRatios[rowDaemon], 1.2))
	t.note("The container rows run in this benchmark binary, which the runtime re-executes as each sandbox's init; the dimplugd row re-executes the real daemon binary. %s", initCostNote(e))
	t.note("The dimplugd row is timed from the Enable call to the daemon's \"instance … ready\" log line (handshake answered): the daemon's bookkeeping, the sandbox's cold start, the plugin's start-up and the SDK handshake.")
	if len(parts.toStarted) > 0 {
		slices.Sort(parts.toStarted)
		slices.Sort(parts.toReady)
		t.note("Its parts, by the daemon's log stamps (p50): Enable call → sandbox started (\"started instance\") %.1f ms; → handshake answered %.1f ms.",
			ms(pct(parts.toStarted, 0.5)), ms(pct(parts.toReady, 0.5)))
	}

	// Idle memory, all three measured side by side after the same idle second.
	e.progress("spawn: idle memory")
	if err := idleMemory(ctx, e, mem, badgePID); err != nil {
		errs = append(errs, err)
	}
	return []*Table{t, mem}, errors.Join(errs...)
}

// verdict formats a ratio against a target ceiling.
func verdict(r, target float64) string {
	switch {
	case math.IsNaN(r):
		return "not measured"
	case r <= target:
		return fmt.Sprintf("%.2f× (meets)", r)
	default:
		return fmt.Sprintf("%.2f× (misses)", r)
	}
}

// daemonParts splits the daemon path in two, by the daemon's log stamps.
type daemonParts struct {
	toStarted []time.Duration // Enable call → sandbox runtime returned
	toReady   []time.Duration // → handshake answered
}

// daemonSpawns starts a dimplugd process, installs media-badge disabled and
// times enable → running warm+n times. It leaves the last instance running
// and returns its pid and a function that stops the daemon.
func daemonSpawns(ctx context.Context, e *env, warm, n int, parts *daemonParts) ([]time.Duration, int, func(), error) {
	d, err := startDaemon(ctx, e, "spawn")
	if err != nil {
		return nil, 0, nil, err
	}
	stop := func() { d.close() }
	fail := func(err error) ([]time.Duration, int, func(), error) {
		stop()
		return nil, 0, nil, err
	}
	dir, err := pluginDir(e.dir, "media-badge", filepath.Join(e.repoRoot, "examples/plugins/media-badge/plugin.toml"), e.bins["media-badge"], "media-badge")
	if err != nil {
		return fail(err)
	}
	if _, err := d.install(ctx, dir, false); err != nil {
		return fail(err)
	}
	var ds []time.Duration
	pid := 0
	for i := range warm + n {
		if i > 0 {
			if _, err := d.ctl.Disable(ctx, "media-badge"); err != nil {
				return fail(d.fail(err))
			}
			if _, err := d.waitState(ctx, "media-badge", "stopped", 20*time.Second); err != nil {
				return fail(err)
			}
		}
		t0 := time.Now()
		if _, err := d.ctl.Enable(ctx, "media-badge"); err != nil {
			return fail(d.fail(err))
		}
		st, err := d.waitState(ctx, "media-badge", "running", 20*time.Second)
		if err != nil {
			return fail(err)
		}
		at, err := d.startedAt(ctx, "media-badge", t0)
		if err != nil {
			return fail(d.fail(err))
		}
		if i >= warm {
			ds = append(ds, at.ready.Sub(t0))
			if !at.started.IsZero() {
				parts.toStarted = append(parts.toStarted, at.started.Sub(t0))
				parts.toReady = append(parts.toReady, at.ready.Sub(at.started))
			}
		}
		pid = st.PID
	}
	slices.Sort(ds)
	return ds, pid, stop, nil
}

// goPluginLaunches times go-plugin's launch of the goplug plugin up to the
// first answered call: NewClient, Client (exec, handshake line, gRPC
// dial), Dispense and one HookResponse.
func goPluginLaunches(ctx context.Context, bin string, warm, n int) ([]time.Duration, error) {
	call := hookwire.Workload()
	var ds []time.Duration
	for i := range warm + n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		c, _ := goPluginClient(bin)
		hooks, err := dispenseHooks(c)
		var m *hookwire.Mutation
		if err == nil {
			m, err = hooks.HookResponse(ctx, call)
		}
		d := time.Since(t0)
		c.Kill()
		if err == nil {
			err = hookwire.Check(m)
		}
		if err != nil {
			return nil, err
		}
		if i >= warm {
			ds = append(ds, d)
		}
	}
	slices.Sort(ds)
	return ds, nil
}

// idleMemory fills mem: media-badge under the daemon (already running as
// pid badgePID, 0 if that failed), a go-plugin plugin after its handshake
// and dispense, and the plain probe after its first answer, all read after
// the same idle second.
func idleMemory(ctx context.Context, e *env, mem *Table, badgePID int) error {
	var errs []error
	gp, gpCmd := goPluginClient(e.bins["goplug"])
	defer gp.Kill()
	if _, err := dispenseHooks(gp); err != nil {
		errs = append(errs, fmt.Errorf("go-plugin plugin: %w", err))
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control-plugin")
	probe := exec.Command(e.bins["fdecho"])
	probe.ExtraFiles = []*os.File{theirs}
	err = probe.Start()
	theirs.Close()
	if err == nil {
		defer func() { ours.Close(); probe.Wait() }()
		_, err = io.WriteString(ours, "ping\n")
		if err == nil {
			_, err = bufio.NewReader(ours).ReadString('\n')
		}
	} else {
		ours.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("probe: %w", err))
	}

	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	row := func(name string, pid int) {
		if pid == 0 {
			mem.skip(name, "did not start")
			return
		}
		rss, err := vmRSS(pid)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			mem.skip(name, err.Error())
			return
		}
		mib := float64(rss) / (1 << 20)
		mem.add(name, mib, mib/8, mib/13.9)
	}
	name := "media-badge, sandboxed, under dimplugd"
	if e.ctErr != nil {
		name = "media-badge under dimplugd [UNSANDBOXED]"
	}
	row(name, badgePID)
	gpPID := 0
	if gpCmd.Process != nil {
		gpPID = gpCmd.Process.Pid
	}
	row("go-plugin v1.8.0 plugin (gRPC, this run)", gpPID)
	probePID := 0
	if probe.Process != nil {
		probePID = probe.Process.Pid
	}
	row("static Go binary that only answers on fd 3 (floor)", probePID)
	mem.add("go-plugin figure from ROADMAP.md (not measured here)", 13.9, 13.9/8, 1)
	mem.note("VmRSS counts resident pages of the process, its mapped binary included. Target: an idle sandboxed Go plugin costs ≤ 8 MiB.")
	return errors.Join(errs...)
}

// initCostNote compares the package initialisation of this binary and of
// dimplugd, which the container runtime pays on every start (see the
// container package's doc), so that a reader can correct the container
// rows for the benchmark binary's heavier imports.
func initCostNote(e *env) string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	selfMs, selfSize := initMillis(self, "-h"), fileMiB(self)
	dMs, dSize := initMillis(e.bins["dimplugd"], "version"), fileMiB(e.bins["dimplugd"])
	if math.IsNaN(selfMs) || math.IsNaN(dMs) {
		return ""
	}
	return fmt.Sprintf("Package init per start (GODEBUG=inittrace, median of 5): this binary %.1f ms (%.0f MiB), dimplugd %.1f ms (%.0f MiB).",
		selfMs, selfSize, dMs, dSize)
}

// initMillis is the median over 5 runs of the summed package-init clock
// time GODEBUG=inittrace=1 reports for bin, or NaN.
func initMillis(bin string, args ...string) float64 {
	var runs []float64
	for range 5 {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		out, _ := cmd.CombinedOutput() // -h exits non-zero; only the trace matters
		total, seen := 0.0, false
		for _, line := range strings.Split(string(out), "\n") {
			// init PKG @T ms, C ms clock, B bytes, A allocs
			f := strings.Fields(line)
			if len(f) >= 7 && f[0] == "init" && f[6] == "clock," {
				if v, err := strconv.ParseFloat(f[4], 64); err == nil {
					total, seen = total+v, true
				}
			}
		}
		if seen {
			runs = append(runs, total)
		}
	}
	return median(runs)
}

func fileMiB(p string) float64 {
	st, err := os.Stat(p)
	if err != nil {
		return math.NaN()
	}
	return float64(st.Size()) / (1 << 20)
}
