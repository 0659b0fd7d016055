//go:build !linux || !cgo

package container

import (
	"context"
	"errors"
	"runtime"

	"github.com/dimplugd/dimplugd/sandbox"
)

// Runtime is unavailable in this build; New always fails.
type Runtime struct{}

var _ sandbox.Runtime = (*Runtime)(nil)

var errUnsupported = errors.New("container runtime unavailable: it needs Linux and a build with cgo and `-tags seccomp` (this binary is " + runtime.GOOS + ", or was built with CGO_ENABLED=0)")

// New fails: the container runtime is not part of this build.
func New(Config) (*Runtime, error) { return nil, errUnsupported }

// Available says why the container runtime cannot run.
func Available() error { return errUnsupported }

// Init does nothing in this build.
func Init() {}

// Name implements sandbox.Runtime.
func (*Runtime) Name() string { return "container" }

// Sandboxed implements sandbox.Runtime.
func (*Runtime) Sandboxed() bool { return true }

// Sweep implements sandbox.Runtime.
func (*Runtime) Sweep(context.Context) error { return errUnsupported }

// Start implements sandbox.Runtime.
func (*Runtime) Start(context.Context, *sandbox.Spec) (sandbox.Process, error) {
	return nil, errUnsupported
}

// Prepared is a prepared instance; this build never makes one.
type Prepared struct{}

// Prepare fails in this build.
func (*Runtime) Prepare(context.Context, *sandbox.Spec) (*Prepared, error) {
	return nil, errUnsupported
}

// Pid returns 0.
func (*Prepared) Pid() int { return 0 }

// Start fails in this build.
func (*Prepared) Start(context.Context) (sandbox.Process, error) { return nil, errUnsupported }

// Discard does nothing in this build.
func (*Prepared) Discard() error { return nil }

// Close does nothing in this build.
func (*Runtime) Close() error { return nil }

// AutoCgroupParent is the --cgroup-parent resolved by DelegatedParent.
const AutoCgroupParent = "auto"

// DelegatedParent fails: the container runtime is not part of this build.
func DelegatedParent() (string, error) { return "", errUnsupported }
