package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
)

// ProcessRuntime starts plugins as plain child processes with no isolation
// at all. It exists for development on machines where the container runtime
// cannot run (not root, not Linux); the daemon only uses it when the operator
// asks for it explicitly and warns at every start.
type ProcessRuntime struct{}

var _ Runtime = ProcessRuntime{}

// Name implements Runtime.
func (ProcessRuntime) Name() string { return "process" }

// Sandboxed implements Runtime: plain processes are not sandboxed.
func (ProcessRuntime) Sandboxed() bool { return false }

// Sweep implements Runtime. Plain processes die with the daemon
// (PR_SET_PDEATHSIG), so there is nothing to sweep.
func (ProcessRuntime) Sweep(context.Context) error { return nil }

// Start implements Runtime.
func (ProcessRuntime) Start(ctx context.Context, spec *Spec) (Process, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	path := filepath.Join(spec.Root, filepath.Clean("/"+spec.Entrypoint))
	cmd := exec.Command(path, spec.Args...)
	cmd.Dir = spec.Root
	cmd.Env = spec.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.ExtraFiles = spec.ExtraFiles()
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	if spec.Stderr != nil {
		cmd.Stderr = spec.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start plugin %q (%s): %w", spec.Plugin, path, err)
	}
	p := &plainProcess{cmd: cmd, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

type plainProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	exit Exit
	once sync.Once
}

// wait is the single goroutine that reaps the child; it ends when the child
// has exited and its output has been copied.
func (p *plainProcess) wait() {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.exit.Signal = ws.Signal()
		} else {
			p.exit.Code = ee.ExitCode()
		}
	default:
		p.exit.Err = err
	}
	close(p.done)
}

func (p *plainProcess) Pid() int              { return p.cmd.Process.Pid }
func (p *plainProcess) Done() <-chan struct{} { return p.done }
func (p *plainProcess) Wait() Exit            { <-p.done; return p.exit }

func (p *plainProcess) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	// Signal the whole process group: plugins that fork helpers take them
	// along.
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

func (p *plainProcess) Destroy() error {
	p.once.Do(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	<-p.done
	return nil
}
