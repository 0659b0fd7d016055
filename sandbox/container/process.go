//go:build linux && cgo

package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"

	"github.com/dimplugd/dimplugd/sandbox"
)

// destroyTimeout bounds how long Destroy waits for the kernel to release an
// instance's cgroups once its processes are gone.
const destroyTimeout = 10 * time.Second

// process is one running instance. Its wait goroutine, started by Start, owns
// libcontainer's Process.Wait; it ends when the instance's init has been
// reaped, and closes done.
type process struct {
	rt     *Runtime
	id     string
	plugin string
	c      *libcontainer.Container
	lp     initProcess
	pid    int
	memDir string // memory cgroup directory, for the OOM counter
	rootfs string
	outs   []*outCopy // output copies wait waits for, like exec.Cmd.Wait

	done chan struct{}
	exit sandbox.Exit // written by wait before done is closed

	destroyMu sync.Mutex
	destroyed bool
}

var _ sandbox.Process = (*process)(nil)

// initProcess is the instance's first process as the Runtime waits for and
// signals it: libcontainer's Process for an instance it started, the
// os.Process of an adopted one (see Adopt). Both wait for the child by its
// pid and never reap anything else.
type initProcess interface {
	Wait() (*os.ProcessState, error)
	Signal(os.Signal) error
}

// wait reaps the instance's init and records how it ended. The OOM counter
// is read here, while the cgroup still exists: Destroy waits for done before
// removing it.
func (p *process) wait() {
	defer close(p.done)
	st, err := p.lp.Wait()
	p.rt.dropInit(p.pid)
	// The pid namespace died with its init, so nothing holds the pipes.
	for _, oc := range p.outs {
		<-oc.done
	}
	var ex sandbox.Exit
	ws, ok := waitStatus(st)
	switch {
	case ok && ws.Signaled():
		ex.Signal = ws.Signal()
	case ok:
		ex.Code = ws.ExitStatus()
	case err != nil:
		ex.Err = fmt.Errorf("wait for plugin %q (instance %s): %w", p.plugin, p.id, err)
	default:
		ex.Err = fmt.Errorf("wait for plugin %q (instance %s): no exit status", p.plugin, p.id)
	}
	// The OOM killer ends a process with SIGKILL; the counter tells it
	// apart from a kill by the daemon.
	if ex.Signal == syscall.SIGKILL && oomKills(p.memDir) > 0 {
		ex.OOMKilled = true
	}
	p.exit = ex
}

func waitStatus(st *os.ProcessState) (syscall.WaitStatus, bool) {
	if st == nil {
		return 0, false
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ws, ok
}

// Pid implements sandbox.Process: the host pid of the instance's init, which
// is pid 1 in its namespace.
func (p *process) Pid() int { return p.pid }

// Done implements sandbox.Process.
func (p *process) Done() <-chan struct{} { return p.done }

// Wait implements sandbox.Process.
func (p *process) Wait() sandbox.Exit {
	<-p.done
	return p.exit
}

// Signal implements sandbox.Process. As the instance's first process is pid
// 1 of its namespace, SIGKILL ends every process in the instance.
func (p *process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	if err := p.lp.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return os.ErrProcessDone
		}
		return fmt.Errorf("signal plugin %q (instance %s): %w", p.plugin, p.id, err)
	}
	return nil
}

// Destroy implements sandbox.Process: it kills the instance if it runs,
// waits for it, and removes its cgroups, state directory and root skeleton.
// After an error it may be called again to retry.
func (p *process) Destroy() error {
	p.destroyMu.Lock()
	defer p.destroyMu.Unlock()
	if p.destroyed {
		return nil
	}
	select {
	case <-p.done:
	default:
		_ = p.lp.Signal(syscall.SIGKILL)
	}
	<-p.done

	ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
	defer cancel()
	if err := p.rt.cleanup(ctx, p.c, p.id, p.rootfs); err != nil {
		return fmt.Errorf("destroy sandbox for plugin %q (instance %s): %w", p.plugin, p.id, err)
	}
	p.destroyed = true
	p.rt.release(p.id)
	return nil
}

// cleanup removes what an instance that no longer runs leaves: the
// container's cgroups and state directory (through c when there is one), any
// cgroup directory libcontainer did not know of, and the root skeleton.
func (r *Runtime) cleanup(ctx context.Context, c *libcontainer.Container, id, rootfs string) error {
	var errs []error
	if c != nil {
		if err := c.Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroup(ctx, r.cgroupPath(id)); err != nil {
		errs = append(errs, err)
	}
	if err := removeStateDir(r.cfg.StateRoot, id); err != nil {
		errs = append(errs, err)
	}
	if err := removeRootfs(rootfs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
