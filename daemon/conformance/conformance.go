// Package conformance is dimplugd's conformance kit: it checks a host or a
// plugin, written in any language, against the contract of
// docs/host-protocol.md and docs/protocol.md. It starts a real daemon
// (`dimplugd serve`, sandboxed when it can be), installs plugins, drives
// requests through every phase with a Driver, and reports each case. The
// cases, the driver protocol and the behaviours a plugin under test
// implements are specified in docs/conformance.md; `dimplugd conformance`
// is its command line.
//
// The package owns the daemon process it starts (stopped by Kit.Close) and
// the driver (closed by Kit.Close). It imports the daemon only through its
// binary.
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// Config says what the kit checks and with what.
type Config struct {
	// Daemon is the dimplugd binary to run. Required.
	Daemon string
	// PluginBin is the plugin's executable, installed as conf-a and conf-b
	// (and conf-c for the watch case). For `conformance host` it is the
	// kit's own plugin; for `conformance plugin`, the plugin under test.
	// Required.
	PluginBin string
	// NewDriver starts the host under test on the daemon's host socket.
	// Nil: the Go host SDK, in this process.
	NewDriver func(ctx context.Context, socket string) (Driver, error)
	// Sandbox: run plugins in the container sandbox (needs root); false
	// runs them as plain processes.
	Sandbox bool
	// Run selects cases by name; nil runs all.
	Run *regexp.Regexp
	// Verbose receives each step as it happens; nil: nothing.
	Verbose io.Writer
}

// Status is a case's verdict.
type Status string

// Case verdicts.
const (
	Pass       Status = "pass"
	Fail       Status = "FAIL"
	NotClaimed Status = "not claimed" // needs a feature the driver does not list
)

// Result is one case's verdict and, for a failure, why.
type Result struct {
	Name     string        `json:"name"`
	Status   Status        `json:"status"`
	Detail   string        `json:"detail,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Report is what a run found.
type Report struct {
	Implementation string   `json:"implementation"`
	Features       []string `json:"features"`
	Results        []Result `json:"results"`
	DriverStderr   string   `json:"driver_stderr,omitempty"`
	DaemonLog      string   `json:"daemon_log,omitempty"`
}

// Passed reports whether no case failed.
func (r *Report) Passed() bool {
	for _, c := range r.Results {
		if c.Status == Fail {
			return false
		}
	}
	return true
}

// Counts returns how many cases passed, failed and were not claimed.
func (r *Report) Counts() (pass, fail, notClaimed int) {
	for _, c := range r.Results {
		switch c.Status {
		case Pass:
			pass++
		case Fail:
			fail++
		default:
			notClaimed++
		}
	}
	return
}

// WriteText prints the report as a table, with failures' details.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "conformance of %s (features: %s)\n", r.Implementation, strings.Join(r.Features, ", "))
	for _, c := range r.Results {
		fmt.Fprintf(w, "  %-12s %-32s %6.2fs\n", c.Status, c.Name, c.Duration.Seconds())
		if c.Detail != "" {
			for _, l := range strings.Split(c.Detail, "\n") {
				fmt.Fprintf(w, "      %s\n", l)
			}
		}
	}
	pass, fail, nc := r.Counts()
	fmt.Fprintf(w, "%d passed, %d failed, %d not claimed\n", pass, fail, nc)
	if fail > 0 && r.DriverStderr != "" {
		fmt.Fprintf(w, "driver stderr (end):\n%s\n", indent(r.DriverStderr))
	}
	if fail > 0 && r.DaemonLog != "" {
		fmt.Fprintf(w, "daemon log (end):\n%s\n", indent(r.DaemonLog))
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ")
}

// Run starts a daemon, installs the plugins, runs every selected case and
// returns the report. An error means the kit could not run at all.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	k, err := start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer k.close()
	rep := &Report{Implementation: k.drv.Hello().Implementation, Features: k.drv.Hello().Features}
	for _, c := range cases {
		if cfg.Run != nil && !cfg.Run.MatchString(c.name) {
			continue
		}
		k.logf("=== %s", c.name)
		started := time.Now()
		res := Result{Name: c.name, Status: Pass}
		if c.needs != "" && !k.drv.Hello().has(c.needs) {
			res.Status, res.Detail = NotClaimed, "needs feature "+c.needs
		} else if err := k.runCase(ctx, c); err != nil {
			res.Status, res.Detail = Fail, err.Error()
		}
		res.Duration = time.Since(started)
		k.logf("--- %s %s %s", res.Status, c.name, res.Detail)
		rep.Results = append(rep.Results, res)
	}
	if pd, ok := k.drv.(*ProcessDriver); ok {
		rep.DriverStderr = lastLines(pd.Stderr(), 40)
	}
	rep.DaemonLog = lastLines(k.daemonLog.String(), 40)
	return rep, nil
}

// runCase runs one case, turning a panic in it into a failure (the case
// code is ours, but a driver's odd answer must not end the run).
func (k *kit) runCase(ctx context.Context, c kitCase) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the kit panicked in this case: %v", p)
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	return c.run(cctx, k)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kit is one run: a daemon process, its control connection and a driver.
type kit struct {
	cfg     Config
	dir     string // temporary: state, sockets, plugin directories
	socket  string
	control string

	daemon    *exec.Cmd
	exited    chan struct{}
	daemonLog *tail
	ctl       *host.Control
	drv       Driver
}

func start(ctx context.Context, cfg Config) (*kit, error) {
	if cfg.Daemon == "" || cfg.PluginBin == "" {
		return nil, fmt.Errorf("%w: the kit needs the dimplugd binary and a plugin binary", errdefs.ErrInvalid)
	}
	for _, f := range []string{cfg.Daemon, cfg.PluginBin} {
		if st, err := os.Stat(f); err != nil || st.IsDir() {
			return nil, fmt.Errorf("%w: %s is not an executable file (%v)", errdefs.ErrNotFound, f, err)
		}
	}
	dir, err := os.MkdirTemp("", "dpconf")
	if err != nil {
		return nil, err
	}
	k := &kit{cfg: cfg, dir: dir, socket: filepath.Join(dir, "host.sock"), control: filepath.Join(dir, "control.sock"), daemonLog: &tail{max: 256 << 10}}
	ok := false
	defer func() {
		if !ok {
			k.close()
		}
	}()
	if err := k.startDaemon(ctx); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		name     string
		priority int
	}{{"conf-a", 10}, {"conf-b", 20}} {
		if err := k.install(ctx, p.name, p.priority); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"conf-a", "conf-b"} {
		if err := k.waitRunning(ctx, name); err != nil {
			return nil, err
		}
	}
	if cfg.NewDriver == nil {
		cfg.NewDriver = func(ctx context.Context, socket string) (Driver, error) { return DialGoDriver(ctx, socket) }
	}
	drv, err := cfg.NewDriver(ctx, k.socket)
	if err != nil {
		if errdefs.Class(err) == nil {
			err = errdefs.WithClass(err, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("start the driver: %w", err)
	}
	k.drv = drv
	ok = true
	return k, nil
}

func (k *kit) logf(format string, args ...any) {
	if k.cfg.Verbose != nil {
		fmt.Fprintf(k.cfg.Verbose, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
	}
}

// startDaemon runs `dimplugd serve` on the kit's state directory and
// sockets and waits until its control socket answers.
func (k *kit) startDaemon(ctx context.Context) error {
	args := []string{"serve", "--state-dir", filepath.Join(k.dir, "state"), "--socket", k.socket,
		"--control-socket", k.control, "--unsigned", "allow"}
	if !k.cfg.Sandbox {
		args = append(args, "--insecure-no-sandbox")
	}
	k.daemon = exec.Command(k.cfg.Daemon, args...)
	k.daemon.Stdout, k.daemon.Stderr = k.daemonLog, k.daemonLog
	// The daemon does not outlive the kit, even one that is killed.
	k.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := k.daemon.Start(); err != nil {
		return fmt.Errorf("start %s: %w", k.cfg.Daemon, err)
	}
	exited := make(chan struct{})
	k.exited = exited
	go func(c *exec.Cmd) { c.Wait(); close(exited) }(k.daemon) // owns the process until it exits
	deadline := time.Now().Add(20 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := host.DialControl(dctx, k.control)
		cancel()
		if err == nil {
			if k.ctl != nil {
				k.ctl.Close()
			}
			k.ctl = c
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%w: dimplugd serve exited:\n%s", errdefs.ErrUnavailable, lastLines(k.daemonLog.String(), 30))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: dimplugd serve did not answer on %s within 20 s:\n%s", errdefs.ErrUnavailable, k.control, lastLines(k.daemonLog.String(), 30))
		}
	}
}

// stopDaemon stops the daemon with SIGTERM (it stops its plugins) and
// waits up to 15 s, then kills it.
func (k *kit) stopDaemon() {
	if k.ctl != nil {
		k.ctl.Close()
		k.ctl = nil
	}
	if k.daemon == nil {
		return
	}
	k.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(15 * time.Second):
		k.daemon.Process.Kill()
		<-k.exited
	}
	k.daemon = nil
}

func (k *kit) close() {
	if k.drv != nil {
		k.drv.Close()
	}
	k.stopDaemon()
	os.RemoveAll(k.dir)
}

// kitManifest is the manifest the kit installs the plugin with
// (docs/conformance.md, "The routes the kit installs").
func kitManifest(name string, priority int) string {
	hook := func(hname, phase, method, route, deadline, failure string, prio int) string {
		return fmt.Sprintf("\n[[hooks]]\nname = %q\nphase = %q\nmethod = %q\nroute = %q\ndeadline = %q\nfailure = %q\npriority = %d\n",
			hname, phase, method, route, deadline, failure, prio)
	}
	m := fmt.Sprintf("name = %q\nversion = \"1.0.0\"\nentrypoint = \"plugin\"\n", name)
	m += hook("req", "request", "GET", "/conf/:id", "1s", "fail-open", priority)
	m += hook("resp", "response", "GET", "/conf/:id", "1s", "fail-open", priority)
	m += hook("obs", "observe", "GET", "/conf/:id", "1s", "fail-open", priority)
	m += fmt.Sprintf("\n[[streams]]\nname = \"frames\"\nkind = %q\nrole = \"transform\"\npriority = %d\ndeadline = \"2s\"\nfailure = \"fail-closed\"\n", StreamKind, priority)
	m += "\n[permissions]\nmemory = \"96MiB\"\n"
	switch name {
	case "conf-a":
		m += hook("solo", "request", "*", "/solo/:id", "300ms", "fail-open", 0)
		m += hook("page", "route", "GET", "/conf-a/page/*rest", "1s", "fail-closed", 0)
	case "conf-b":
		m += hook("strict", "request", "GET", "/strict/:id/*rest", "300ms", "fail-closed", 0)
	}
	return m
}

// StreamKind is the frame kind of the kit's stream stages.
const StreamKind = "conformance/frames"

// install installs the plugin under name, enabled.
func (k *kit) install(ctx context.Context, name string, priority int) error {
	pdir := filepath.Join(k.dir, "plugins", name)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return err
	}
	if err := copyExecutable(k.cfg.PluginBin, filepath.Join(pdir, "plugin")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pdir, "plugin.toml"), []byte(kitManifest(name, priority)), 0o644); err != nil {
		return err
	}
	archive, err := host.Archive(pdir)
	if err != nil {
		return err
	}
	ictx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := k.ctl.Install(ictx, archive, host.InstallOptions{Enable: true}); err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	return nil
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// waitRunning waits up to 30 s for a plugin to be running.
func (k *kit) waitRunning(ctx context.Context, name string) error {
	var last *host.PluginStatus
	err := waitUntil(ctx, 30*time.Second, func() (bool, error) {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := k.ctl.Inspect(ictx, name)
		if err != nil {
			return false, nil
		}
		last = st
		return st.State == "running", nil
	})
	if err != nil {
		b, _ := json.Marshal(last)
		return fmt.Errorf("plugin %s is not running: %w; last status %s\n%s", name, err, b, lastLines(k.daemonLog.String(), 20))
	}
	return nil
}

// errTimedOut is what waitUntil returns when the condition never held.
var errTimedOut = errors.New("timed out")

// waitUntil polls cond every 20 ms until it holds, fails, or timeout
// passes. Every wait of the kit goes through it.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", errTimedOut, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// hookCalls is the daemon's call count of one hook (through the daemon
// and reported from direct lanes).
func (k *kit) hookCalls(ctx context.Context, plugin, hook string) (uint64, error) {
	st, err := k.ctl.Inspect(ctx, plugin)
	if err != nil {
		return 0, err
	}
	for _, h := range st.Hooks {
		if h.Name == hook {
			return h.Calls, nil
		}
	}
	return 0, fmt.Errorf("%s has no hook %q", plugin, hook)
}
