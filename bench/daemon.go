package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// daemonProc is a `dimplugd serve` process the harness started: the real
// daemon binary, as an operator runs it, with its own state and sandbox
// directories.
type daemonProc struct {
	cmd       *exec.Cmd
	dir       string // state dir and socket
	ctState   string // container runtime state, on /run (tmpfs)
	cgroup    string
	socket    string // the host socket
	control   string // the control socket
	sandboxed bool
	log       *syncBuffer
	waited    chan struct{}
	ctl       *host.Control
}

// startDaemon starts dimplugd with the container runtime, or without a
// sandbox when the container runtime cannot run here (rows then say so),
// and waits until its socket answers.
func startDaemon(ctx context.Context, e *env, tag string) (*daemonProc, error) {
	dir, err := os.MkdirTemp("", "dpb")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o711) // the sandboxes' mapped uids pass through to the installed plugins
	d := &daemonProc{
		dir:       dir,
		socket:    filepath.Join(dir, "d.sock"),
		control:   filepath.Join(dir, "control.sock"),
		cgroup:    fmt.Sprintf("dimplugd-bench-%d-%s", os.Getpid(), tag),
		sandboxed: e.ctErr == nil,
		log:       &syncBuffer{},
		waited:    make(chan struct{}),
	}
	args := []string{"serve", "--state-dir", filepath.Join(dir, "state"), "--socket", d.socket, "--control-socket", d.control}
	if d.sandboxed {
		if d.ctState, err = os.MkdirTemp("/run", "dimplugd-bench-"); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		args = append(args, "--container-state", d.ctState, "--cgroup-parent", d.cgroup)
	} else {
		args = append(args, "--insecure-no-sandbox")
	}
	d.cmd = exec.Command(e.bins["dimplugd"], args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.removeDirs()
		return nil, err
	}
	go func() { d.cmd.Wait(); close(d.waited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		d.ctl, err = host.DialControl(cctx, d.control)
		cancel()
		if err == nil {
			return d, nil
		}
		select {
		case <-d.waited:
			d.removeDirs()
			return nil, fmt.Errorf("dimplugd exited at start-up:\n%s", d.log.Tail(4000))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.close()
			return nil, fmt.Errorf("dimplugd did not serve %s within 20s: %v\n%s", d.socket, err, d.log.Tail(4000))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fail wraps err with the end of the daemon's log.
func (d *daemonProc) fail(err error) error {
	return fmt.Errorf("%w\ndimplugd log (end):\n%s", err, d.log.Tail(3000))
}

// install installs the plugin in dir (a directory with plugin.toml) with
// the permissions its manifest asks for.
func (d *daemonProc) install(ctx context.Context, dir string, enable bool) (*host.PluginStatus, error) {
	archive, err := host.Archive(dir)
	if err != nil {
		return nil, err
	}
	st, err := d.ctl.Install(ctx, archive, host.InstallOptions{Enable: enable})
	if err != nil {
		return nil, d.fail(fmt.Errorf("install %s: %w", dir, err))
	}
	return st, nil
}

// waitState polls the plugin every few milliseconds until its state is
// want.
func (d *daemonProc) waitState(ctx context.Context, name, want string, timeout time.Duration) (*host.PluginStatus, error) {
	deadline := time.Now().Add(timeout)
	var last *host.PluginStatus
	for {
		st, err := d.ctl.Inspect(ctx, name)
		if err != nil {
			return nil, d.fail(err)
		}
		last = st
		if st.State == want {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, d.fail(fmt.Errorf("plugin %s not %s after %s: state %s (%s), last exit %q", name, want, timeout, last.State, last.Detail, last.LastExit))
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// startTimes are the daemon's log stamps of one plugin start.
type startTimes struct {
	started time.Time // the sandbox runtime returned ("started instance …")
	ready   time.Time // the handshake was answered ("instance … ready")
}

// startedAt finds the stamps of the plugin's newest instance in the
// daemon's log, if they are after t0.
func (d *daemonProc) startedAt(ctx context.Context, name string, t0 time.Time) (startTimes, error) {
	var st startTimes
	lines, err := d.ctl.Logs(ctx, name, 50, nil)
	if err != nil {
		return st, d.fail(err)
	}
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if l.Stream != "daemon" || l.Time.Before(t0) {
			continue
		}
		switch {
		case st.ready.IsZero() && strings.HasPrefix(l.Text, "instance ") && strings.Contains(l.Text, " ready (protocol"):
			st.ready = l.Time
		case !st.ready.IsZero() && strings.HasPrefix(l.Text, "started ") && strings.Contains(l.Text, "instance ") && strings.Contains(l.Text, "(pid "):
			st.started = l.Time
			return st, nil
		}
	}
	if st.ready.IsZero() {
		return st, errors.New("the daemon logged no handshake for the new instance")
	}
	return st, nil // no start line: the breakdown is left out
}

// pluginDir makes an installable directory holding a manifest and a binary.
func pluginDir(parent, name, manifest, bin, entry string) (string, error) {
	m, err := os.ReadFile(manifest)
	if err != nil {
		return "", err
	}
	return pluginDirManifest(parent, name, string(m), bin, entry)
}

// pluginDirManifest is pluginDir with the manifest's text.
func pluginDirManifest(parent, name, manifest, bin, entry string) (string, error) {
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte(manifest), 0o644); err != nil {
		return "", err
	}
	if err := copyFile(bin, filepath.Join(dir, entry), 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// close stops the daemon (SIGTERM: it stops its plugins) and removes what
// it left.
func (d *daemonProc) close() error {
	if d.ctl != nil {
		d.ctl.Close()
	}
	var err error
	select {
	case <-d.waited:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.waited:
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-d.waited
			err = d.fail(errors.New("dimplugd ignored SIGTERM for 20s"))
		}
	}
	d.removeDirs()
	return err
}

func (d *daemonProc) removeDirs() {
	os.RemoveAll(d.dir)
	if d.ctState != "" {
		os.RemoveAll(d.ctState)
	}
	removeCgroups(d.cgroup)
}
