package main

// callgrind — instructions per hooked call, counted by valgrind's callgrind
// tool (user-mode instructions, "Ir"), which repeat from run to run where
// the wall clock on a shared VM does not. The call is the hooks section's
// direct-lane row: host.Session.Dispatch of a response-phase hook with
// hookwire.Workload() from a Go host process to bench/plugins/badge (the
// Go plugin SDK, no key-value store) and back, one round trip.
//
// Both sides run under callgrind in the same run: the host is this binary
// re-executed under valgrind (callgrindHostEnv, see init below); the plugin
// is installed into a `dimplugd serve --insecure-no-sandbox` process with a
// shell script as its entrypoint that execs valgrind on the real binary.
// The sandbox cannot run valgrind (the plugin's root holds the plugin's
// files only), so this section's plugin is unsandboxed; callgrind counts
// user-mode instructions only, and what the sandbox adds (seccomp filter,
// namespaces, cgroup) is kernel work, so the counts do not depend on it.
//
// Each run counts everything its process ever executes (Go runtime start,
// dial, handshake, the daemon granting the direct lane, exit); two runs,
// with n1 and n2 calls after the same warm-up, cancel all of that:
// instructions per call = (I(n2) − I(n1)) / (n2 − n1). The Go runtime's
// background work (GC, which is part of the per-call cost, and sysmon,
// which is not) is counted as it falls. Each repetition is such a pair;
// the table gives the mean over the repetitions and their spread.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/bench/internal/hookwire"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// callgrindHostEnv, set in the environment of this binary, makes it the
// callgrind section's host program instead of the harness: the value is
// "socket,plugin,warm,n" (see callgrindHost).
const callgrindHostEnv = "DIMPLUGD_BENCH_CALLGRIND_HOST"

// callgrindKeepEnv, when set to a directory, keeps each run's callgrind
// output files there (r0-n1000-host.out, r0-n1000-plugin.out, …), for
// callgrind_annotate.
const callgrindKeepEnv = "DIMPLUGD_BENCH_CALLGRIND_KEEP"

func init() {
	if v, ok := os.LookupEnv(callgrindHostEnv); ok {
		if err := callgrindHost(v); err != nil {
			fmt.Fprintln(os.Stderr, "bench callgrind host:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// callgrindHost dials the daemon at socket, makes calls until the daemon
// has granted the direct lane to plugin (at least warm), then n more, and
// checks every answer.
func callgrindHost(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return fmt.Errorf("%s=%q: want socket,plugin,warm,n", callgrindHostEnv, spec)
	}
	warm, err1 := strconv.Atoi(f[2])
	n, err2 := strconv.Atoi(f[3])
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sess, err := host.Dial(ctx, f[0])
	if err != nil {
		return err
	}
	defer sess.Close()
	req, resp := hostRequest(hookwire.Workload())
	call := func() error {
		res, err := sess.Dispatch(ctx, host.PhaseResponse, req, resp)
		if err != nil {
			return err
		}
		if res.Kind != host.MutateResponse || res.ResponseMutation.Header.Get(hookwire.BadgeHeader) != hookwire.BadgeValue || len(res.Skipped) > 0 {
			return fmt.Errorf("unexpected dispatch result %+v", res)
		}
		return nil
	}
	for i := 0; ; i++ {
		if err := call(); err != nil {
			return err
		}
		if i+1 < warm {
			continue
		}
		granted, refused := sess.DirectLane(f[1])
		if granted {
			break
		}
		if refused != "" {
			return fmt.Errorf("direct lane to %s refused: %s", f[1], refused)
		}
		if i > 10*warm+1000 {
			return fmt.Errorf("no direct lane to %s after %d calls", f[1], i+1)
		}
	}
	for range n {
		if err := call(); err != nil {
			return err
		}
	}
	return nil
}

// callgrindRun is one measured run: the instructions each process
// executed in its life.
type callgrindRun struct{ host, plugin float64 }

func runCallgrind(ctx context.Context, e *env) ([]*Table, error) {
	reps, n1, n2, warm := e.quick(1, 3), e.quick(100, 1000), e.quick(300, 3000), 50
	tab := &Table{
		Title: fmt.Sprintf("callgrind: instructions per hooked call on a direct lane (Ir, (I(%d) − I(%d)) / %d calls, %d repetitions)",
			n2, n1, n2-n1, reps),
		Label: "side",
		Cols: []Col{{Name: "instr/call, mean", Format: "%.0f", Unit: "instructions"},
			{Name: "min", Format: "%.0f", Unit: "instructions"}, {Name: "max", Format: "%.0f", Unit: "instructions"},
			{Name: "spread %", Format: "%.2f", Unit: "%", Signed: true}},
	}
	rowNames := []string{
		"host: sdk-go/host Session.Dispatch (Go host process)",
		"plugin: sdk-go/plugin serving bench/plugins/badge",
		"host + plugin",
	}
	valgrind, err := exec.LookPath("valgrind")
	why := ""
	switch {
	case err != nil:
		why = "valgrind is not installed"
	case raceEnabled:
		why = "the race detector's runtime does not run under valgrind"
	}
	if why != "" {
		for _, r := range rowNames {
			tab.notMeasured(r, why)
		}
		return []*Table{tab}, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// The plugin must run unsandboxed to run under valgrind.
	ue := *e
	ue.ctErr = errors.New("valgrind cannot run in the sandbox")

	var pairs [][2]callgrindRun
	for r := range reps {
		var pair [2]callgrindRun
		for i, n := range []int{n1, n2} {
			e.progress("callgrind: repetition %d/%d: %d calls", r+1, reps, n)
			run, err := callgrindOnce(ctx, &ue, valgrind, self, fmt.Sprintf("r%d-n%d", r, n), warm, n)
			if err != nil {
				return nil, err
			}
			e.progress("callgrind: host %.0f, plugin %.0f instructions", run.host, run.plugin)
			pair[i] = run
		}
		pairs = append(pairs, pair)
	}
	per := func(side func(callgrindRun) float64) (mean, lo, hi float64) {
		lo, hi = math.Inf(1), math.Inf(-1)
		for _, p := range pairs {
			v := (side(p[1]) - side(p[0])) / float64(n2-n1)
			mean += v / float64(len(pairs))
			lo, hi = min(lo, v), max(hi, v)
		}
		return mean, lo, hi
	}
	sides := []func(callgrindRun) float64{
		func(c callgrindRun) float64 { return c.host },
		func(c callgrindRun) float64 { return c.plugin },
		func(c callgrindRun) float64 { return c.host + c.plugin },
	}
	for i, side := range sides {
		mean, lo, hi := per(side)
		tab.add(rowNames[i], mean, lo, hi, 100*(hi-lo)/mean)
	}
	tab.note("spread %% = (max − min) / mean over the repetitions; each process counted whole by valgrind --tool=callgrind, start-up cancelled by the difference of two runs")
	tab.note("the plugin runs under dimplugd --insecure-no-sandbox (valgrind cannot run in the sandbox): the counts are user-mode instructions, which the sandbox does not change")
	return []*Table{tab}, nil
}

// callgrindOnce starts a daemon, installs the badge plugin under
// callgrind, runs the host under callgrind for warm + n calls, stops the
// plugin and reads both counts.
func callgrindOnce(ctx context.Context, e *env, valgrind, self, tag string, warm, n int) (callgrindRun, error) {
	var run callgrindRun
	dir, err := os.MkdirTemp(e.dir, "callgrind-"+tag+"-")
	if err != nil {
		return run, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return run, err
	}
	hostOut, pluginOut := filepath.Join(dir, "host.out"), filepath.Join(dir, "plugin.out")

	d, err := startDaemon(ctx, e, "callgrind")
	if err != nil {
		return run, err
	}
	defer d.close()
	pdir, err := pluginDir(dir, "bench-badge", filepath.Join(e.benchRoot, "plugins/badge/plugin.toml"), e.bins["badge"], "badge.bin")
	if err != nil {
		return run, err
	}
	// The manifest's entrypoint, "badge", becomes a script running the
	// real binary under callgrind. The daemon gives plugins an empty
	// environment but for PATH, HOME and its own variables; valgrind
	// keeps the descriptors the daemon passes (3 and up). Both sides run
	// with GODEBUG=asyncpreemptoff=1: callgrind (3.19) aborts on the Go
	// scheduler's preemption signals (an assertion in its signal
	// handling), and a call of a few microseconds is not preempted anyway;
	// and with --fair-sched=yes, as without it a thread spinning in the Go
	// scheduler could starve the others for seconds (a hook call then
	// missed its 5 s deadline).
	script := fmt.Sprintf("#!/bin/sh\nGODEBUG=asyncpreemptoff=1 exec %s -q --tool=callgrind --fair-sched=yes --callgrind-out-file=%s ./badge.bin \"$@\"\n",
		shellQuote(valgrind), shellQuote(pluginOut))
	if err := os.WriteFile(filepath.Join(pdir, "badge"), []byte(script), 0o755); err != nil {
		return run, err
	}
	if _, err := d.install(ctx, pdir, true); err != nil {
		return run, err
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		st, err := d.ctl.Inspect(ctx, "bench-badge")
		if err != nil {
			return run, d.fail(err)
		}
		if st.State == "running" {
			break
		}
		if st.State == "quarantined" || time.Now().After(deadline) || ctx.Err() != nil {
			return run, d.fail(fmt.Errorf("the plugin under callgrind is %s, not running (%s, last exit %q); its output:\n%s",
				st.State, st.Detail, st.LastExit, pluginLogs(ctx, d)))
		}
		time.Sleep(10 * time.Millisecond)
	}

	cmd := exec.CommandContext(ctx, valgrind, "-q", "--tool=callgrind", "--fair-sched=yes", "--callgrind-out-file="+hostOut, self)
	cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1", fmt.Sprintf("%s=%s,%s,%d,%d", callgrindHostEnv, d.socket, "bench-badge", warm, n))
	if out, err := cmd.CombinedOutput(); err != nil {
		return run, d.fail(fmt.Errorf("host under callgrind: %w\n%s", err, out))
	}
	if run.host, err = callgrindTotal(hostOut); err != nil {
		return run, err
	}
	// Stopping the plugin lets it exit, and callgrind write its counts.
	if _, err := d.ctl.Disable(ctx, "bench-badge"); err != nil {
		return run, d.fail(fmt.Errorf("disable: %w", err))
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if run.plugin, err = callgrindTotal(pluginOut); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return run, d.fail(fmt.Errorf("plugin under callgrind: %w (it must exit, not be killed, for callgrind to write its counts); its output:\n%s", err, pluginLogs(ctx, d)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if keep := os.Getenv(callgrindKeepEnv); keep != "" {
		for _, f := range []string{hostOut, pluginOut} {
			if err := copyFile(f, filepath.Join(keep, tag+"-"+filepath.Base(f)), 0o644); err != nil {
				return run, err
			}
		}
	}
	return run, nil
}

// callgrindTotal reads the total instruction count from a callgrind
// output file: its "totals:" line, written last, so that a file callgrind
// is still writing is not read (the "summary:" line near the top gives the
// same figure).
func callgrindTotal(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "totals:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				return 0, fmt.Errorf("%s: empty totals line", path)
			}
			return strconv.ParseFloat(fs[0], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no totals yet", path)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// pluginLogs is the end of the plugin's output, as the daemon logged it.
func pluginLogs(ctx context.Context, d *daemonProc) string {
	lines, err := d.ctl.Logs(ctx, "bench-badge", 40, nil)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s: %s\n", l.Stream, l.Text)
	}
	return b.String()
}
