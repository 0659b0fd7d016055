//go:build linux && cgo

package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/runc/libcontainer"

	"github.com/dimplugd/dimplugd/sandbox"
)

// The control socket is the first of libcontainer's ExtraFiles, which the
// child sees at fd 3; these fail to compile if sandbox.ControlFD moves.
var (
	_ [sandbox.ControlFD - 3]struct{}
	_ [3 - sandbox.ControlFD]struct{}
)

// Start implements sandbox.Runtime. It builds the instance's root skeleton,
// creates the container and runs the plugin's entrypoint in it, with
// spec.Control as fd 3. The plugin runs as uid 0 of its user namespace,
// which is Config.UIDBase on the host, in / (its own files), with HOME=/tmp
// unless spec.Env sets HOME. Start fails if an instance with spec.ID exists,
// whether started by this Runtime or left behind by an earlier daemon.
//
// Start is Prepare followed by Prepared.Start.
func (r *Runtime) Start(ctx context.Context, spec *sandbox.Spec) (sandbox.Process, error) {
	pp, err := r.prepare(ctx, spec, "start")
	if err != nil {
		return nil, err
	}
	return pp.start(ctx)
}

// Prepared is an instance whose sandbox is fully set up (namespaces, root
// filesystem, cgroups, seccomp) and whose init waits for the go-ahead to
// execute the plugin's entrypoint. Starting it takes little more than the
// plugin's own start-up time, so a supervisor can prepare the next instance
// of a plugin ahead of need (during a restart back-off, say) and start it
// when it is wanted. A Prepared must be started or discarded; the
// Runtime counts it as a live instance until then, and Sweep after a daemon
// crash removes it like any other.
type Prepared struct {
	p *process

	mu   sync.Mutex
	used bool
}

// Prepare does everything Start does except executing the plugin's
// entrypoint. The spec's rules are Start's; the control socket is already
// held by the prepared sandbox when Prepare returns, so the caller may close
// its copy of spec.Control then.
func (r *Runtime) Prepare(ctx context.Context, spec *sandbox.Spec) (*Prepared, error) {
	return r.prepare(ctx, spec, "prepare")
}

// Pid is the host pid of the prepared instance's init.
func (pp *Prepared) Pid() int { return pp.p.pid }

// Start executes the plugin's entrypoint in the prepared sandbox and returns
// the running instance. It may be called once; on failure the sandbox is
// destroyed.
func (pp *Prepared) Start(ctx context.Context) (sandbox.Process, error) {
	return pp.start(ctx)
}

func (pp *Prepared) start(ctx context.Context) (sandbox.Process, error) {
	p := pp.p
	fail := func(step string, err error) error {
		if derr := p.Destroy(); derr != nil {
			err = errors.Join(err, derr)
		}
		return fmt.Errorf("start sandbox for plugin %q (instance %s): %s: %w", p.plugin, p.id, step, err)
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.used {
		return nil, fmt.Errorf("start sandbox for plugin %q (instance %s): the prepared instance was already started or discarded", p.plugin, p.id)
	}
	pp.used = true
	if err := ctx.Err(); err != nil {
		return nil, fail("before running the plugin", err)
	}
	if err := p.c.Exec(); err != nil {
		return nil, fail("run the plugin's entrypoint", err)
	}
	return p, nil
}

// Discard destroys a prepared instance that will not be started. It does
// nothing once the instance was started.
func (pp *Prepared) Discard() error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.used {
		return nil
	}
	pp.used = true
	return pp.p.Destroy()
}

// prepare sets up the sandbox for spec up to the point where its init waits
// to execute the entrypoint. verb names the operation in errors.
func (r *Runtime) prepare(ctx context.Context, spec *sandbox.Spec, verb string) (*Prepared, error) {
	fail := func(step string, err error) error {
		return fmt.Errorf("%s sandbox for plugin %q (instance %s): %s: %w", verb, spec.Plugin, spec.ID, step, err)
	}
	if err := spec.Validate(); err != nil {
		return nil, fail("check spec", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fail("before start", err)
	}
	lim := spec.Limits.WithDefaults()
	if err := validateLimits(lim); err != nil {
		return nil, fail("check limits", err)
	}
	entry, err := checkEntrypoint(spec)
	if err != nil {
		return nil, fail("check entrypoint", err)
	}

	if err := r.reserve(spec.ID); err != nil {
		if errors.Is(err, errExists) {
			err = fmt.Errorf("an instance with this id is already running in this daemon: %w", err)
		}
		return nil, fail("reserve id", err)
	}
	registered := false
	defer func() {
		if !registered {
			r.release(spec.ID)
		}
	}()
	if _, err := os.Lstat(filepath.Join(r.cfg.StateRoot, spec.ID)); err == nil {
		return nil, fail("reserve id", fmt.Errorf("container state %s %w; an earlier daemon left it behind and Sweep removes it", filepath.Join(r.cfg.StateRoot, spec.ID), errExists))
	}

	rootfs, binds, err := r.buildRootfs(spec)
	if err != nil {
		return nil, fail("build root filesystem", err)
	}
	cfg := r.containerConfig(spec, lim, rootfs, binds)
	c, err := libcontainer.Create(r.cfg.StateRoot, spec.ID, cfg)
	if err != nil {
		_ = removeRootfs(rootfs)
		return nil, fail("create container", err)
	}

	// Output goes through pipes of our own, not os/exec's: exec.Cmd.Wait
	// waits for its copying goroutines, which never end while a set-up
	// stage that outlived a killed stage 0 holds the pipe, and that stage
	// waits for libcontainer: Start would hang for good.
	var outs []*outCopy
	stdout, oc, err := copyOutput(orNil(spec.Stdout))
	if err != nil {
		_ = removeRootfs(rootfs)
		_ = c.Destroy()
		return nil, fail("create output pipe", err)
	}
	if oc != nil {
		outs = append(outs, oc)
	}
	stderr, oc, err := copyOutput(orNil(spec.Stderr))
	if err != nil {
		for _, oc := range outs {
			oc.abandon()
		}
		_ = removeRootfs(rootfs)
		_ = c.Destroy()
		return nil, fail("create output pipe", err)
	}
	if oc != nil {
		outs = append(outs, oc)
	}
	lp := &libcontainer.Process{
		Args:       append([]string{entry}, spec.Args...),
		Env:        pluginEnv(spec.Env),
		Cwd:        "/",
		Stdout:     stdout,
		Stderr:     stderr,
		ExtraFiles: spec.ExtraFiles(),
		Init:       true,
	}
	r.startMu.RLock()
	err = c.Start(lp)
	pid := 0
	if err == nil {
		pid, _ = lp.Pid()
		r.addInit(pid)
	}
	r.startMu.RUnlock()
	for _, oc := range outs {
		oc.w.Close() // the instance holds its own copies
	}
	if err != nil {
		// A set-up process that died early leaves its siblings unwaited.
		r.reapFailedStarts()
		ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
		defer cancel()
		_ = r.cleanup(ctx, c, spec.ID, rootfs)
		return nil, fail("start container init", err)
	}
	p := &process{
		rt:     r,
		id:     spec.ID,
		plugin: spec.Plugin,
		c:      c,
		lp:     lp,
		pid:    pid,
		rootfs: rootfs,
		outs:   outs,
		done:   make(chan struct{}),
	}
	if st, err := c.State(); err == nil {
		p.memDir = st.CgroupPaths["memory"]
		if p.memDir == "" {
			p.memDir = st.CgroupPaths[""] // cgroup v2
		}
	}
	go p.wait()
	r.register(spec.ID, p)
	registered = true
	if err := ctx.Err(); err != nil {
		if derr := p.Destroy(); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, fail("after starting the container", err)
	}
	return &Prepared{p: p}, nil
}

// checkEntrypoint returns the entrypoint's path inside the sandbox after
// checking that the mapped uid will be able to execute it.
func checkEntrypoint(spec *sandbox.Spec) (string, error) {
	entry := filepath.Clean("/" + spec.Entrypoint)
	if entry == "/" {
		return "", errors.New("entrypoint names the plugin root itself")
	}
	host := filepath.Join(spec.Root, entry)
	st, err := os.Stat(host)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", host)
	}
	if st.Mode().Perm()&0o001 == 0 {
		return "", fmt.Errorf("%s has mode %o, but the sandboxed plugin runs as an unprivileged uid and needs it world-executable (installed plugin files must be readable by others)", host, st.Mode().Perm())
	}
	return entry, nil
}

// pluginEnv is env plus HOME=/tmp when env sets no HOME.
func pluginEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	out = append(out, env...)
	for _, kv := range env {
		if strings.HasPrefix(kv, "HOME=") {
			return out
		}
	}
	return append(out, "HOME=/tmp")
}

// outCopy copies what an instance writes to the write end of a pipe into
// the writer the spec named.
type outCopy struct {
	w    *os.File // write end, closed once the instance holds it
	r    *os.File
	done chan struct{} // closed when every write end is closed and the copy ended
}

// copyOutput returns w when it is nil or a file, which the instance can
// write to directly; otherwise the write end of a pipe copied into w.
func copyOutput(w io.Writer) (io.Writer, *outCopy, error) {
	if w == nil {
		return nil, nil, nil
	}
	if f, ok := w.(*os.File); ok {
		return f, nil, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	oc := &outCopy{w: pw, r: pr, done: make(chan struct{})}
	go func() {
		defer close(oc.done)
		_, _ = io.Copy(w, pr)
		pr.Close()
	}()
	return pw, oc, nil
}

// abandon ends a copy whose pipe was never handed to an instance.
func (oc *outCopy) abandon() {
	oc.w.Close()
	<-oc.done
}

// orNil turns a nil *os.File inside w into a nil interface: libcontainer
// treats a typed nil as a real file and fails.
func orNil(w io.Writer) io.Writer {
	if f, ok := w.(*os.File); ok && f == nil {
		return nil
	}
	return w
}

// PrepareInstance implements sandbox.Preparer.
func (r *Runtime) PrepareInstance(ctx context.Context, spec *sandbox.Spec) (sandbox.Prepared, error) {
	pp, err := r.Prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	return pp, nil
}

var _ sandbox.Preparer = (*Runtime)(nil)
