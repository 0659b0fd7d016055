// Package sandbox owns how a plugin process is started, contained and torn
// down. It defines the Runtime seam the daemon's supervisor starts plugins
// through, the data-only Spec a runtime is given, and the development-only
// plain-process runtime. The libcontainer runtime lives in sandbox/container.
//
// This package must not import the daemon, the SDK or cobra.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"syscall"
)

// ControlFD is the file descriptor number at which every plugin finds its
// control socket (the daemon's end of a socketpair). Plugins must exit when it
// reaches EOF.
const ControlFD = 3

// LaneFD is where a plugin finds the socket of its hook lane, when the
// daemon provides one (see schema/lane.capnp).
const LaneFD = 4

// FramesFD is where a plugin finds its frame socket (see
// schema/stream.capnp).
const FramesFD = 5

// Spec describes one plugin instance to start. It is plain data: runtimes
// must not keep references to it after Start returns, except to the files and
// writers it names.
type Spec struct {
	// ID identifies this instance (a container id for container runtimes).
	// Required; lowercase letters, digits and dashes, at most 64 bytes.
	ID string
	// Plugin is the plugin's name, used in messages.
	Plugin string
	// Root is the host directory holding the plugin's installed files. A
	// sandboxed runtime shows it read-only as the root of the plugin's
	// filesystem.
	Root string
	// Entrypoint is the executable, relative to Root.
	Entrypoint string
	// Args are passed after the entrypoint.
	Args []string
	// Env is the complete environment ("KEY=value"); nothing of the daemon's
	// environment leaks in.
	Env []string
	// Control is the plugin's end of the control socketpair; the runtime
	// passes it as fd ControlFD. Required. The caller keeps ownership and
	// closes it after Start returns.
	Control *os.File
	// Lane is the plugin's end of its hook lane, passed as fd LaneFD.
	// Optional; the caller keeps ownership as for Control.
	Lane *os.File
	// Frames is the plugin's frame socket, passed as fd FramesFD; it
	// needs Lane. Optional; the caller keeps ownership.
	Frames *os.File
	// Stdout and Stderr receive the plugin's output. Nil discards it.
	Stdout, Stderr io.Writer
	// Limits are the resource limits granted to the instance.
	Limits Limits
	// Mounts are host paths granted to the plugin, always read-only.
	Mounts []Mount
}

// ExtraFiles are the files a runtime passes from fd 3 on: the control
// socket, then the hook lane and the frame socket when set (fd numbers are
// fixed, so a file is passed only if those before it are).
func (s *Spec) ExtraFiles() []*os.File {
	files := []*os.File{s.Control}
	for _, f := range []*os.File{s.Lane, s.Frames} {
		if f == nil {
			break
		}
		files = append(files, f)
	}
	return files
}

// Limits bounds what one plugin instance may consume. Zero values mean the
// runtime's defaults (see DefaultLimits).
type Limits struct {
	MemoryBytes int64   // memory (and memory+swap) limit
	Pids        int64   // tasks, counting the Go runtime's threads
	CPU         float64 // CPU quota in cores, e.g. 0.5
	TmpBytes    int64   // size of the writable /tmp tmpfs
	OpenFiles   uint64  // RLIMIT_NOFILE
}

// DefaultLimits are applied where a grant leaves a limit unset.
var DefaultLimits = Limits{
	MemoryBytes: 128 << 20,
	Pids:        64,
	CPU:         1,
	TmpBytes:    16 << 20,
	OpenFiles:   256,
}

// WithDefaults returns l with every unset field taken from DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits
	if l.MemoryBytes > 0 {
		d.MemoryBytes = l.MemoryBytes
	}
	if l.Pids > 0 {
		d.Pids = l.Pids
	}
	if l.CPU > 0 {
		d.CPU = l.CPU
	}
	if l.TmpBytes > 0 {
		d.TmpBytes = l.TmpBytes
	}
	if l.OpenFiles > 0 {
		d.OpenFiles = l.OpenFiles
	}
	return d
}

// Mount grants read-only access to a host path inside the sandbox.
type Mount struct {
	Source string // absolute host path
	Target string // absolute path inside the sandbox
}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// Validate reports the first problem with s, naming the field.
func (s *Spec) Validate() error {
	switch {
	case !idPattern.MatchString(s.ID):
		return fmt.Errorf("sandbox spec: id %q must be 1-64 lowercase letters, digits or dashes", s.ID)
	case s.Root == "":
		return errors.New("sandbox spec: root directory is required")
	case s.Entrypoint == "":
		return errors.New("sandbox spec: entrypoint is required")
	case s.Control == nil:
		return errors.New("sandbox spec: control socket is required")
	}
	for i, m := range s.Mounts {
		if len(m.Source) == 0 || m.Source[0] != '/' || len(m.Target) == 0 || m.Target[0] != '/' {
			return fmt.Errorf("sandbox spec: mounts[%d]: source and target must be absolute paths", i)
		}
	}
	return nil
}

// Runtime starts plugin instances. Implementations must be safe for
// concurrent use.
type Runtime interface {
	// Name is a short word for messages and `dimplugctl inspect`
	// ("container", "process").
	Name() string
	// Sandboxed reports whether instances are isolated from the host. The
	// daemon shows "NOT SANDBOXED" for runtimes that return false.
	Sandboxed() bool
	// Sweep destroys instances left behind by an earlier daemon that died
	// without stopping them. The daemon calls it once before starting
	// plugins.
	Sweep(ctx context.Context) error
	// Start starts an instance. When it returns without error the process
	// is running and owns a copy of spec.Control.
	Start(ctx context.Context, spec *Spec) (Process, error)
}

// Process is one running plugin instance.
type Process interface {
	// Pid is the host pid of the instance's first process.
	Pid() int
	// Done is closed when the instance has exited and been reaped.
	Done() <-chan struct{}
	// Wait blocks until the instance exits and reports how. It may be
	// called any number of times, from any goroutine.
	Wait() Exit
	// Signal sends sig to the instance's first process.
	Signal(sig syscall.Signal) error
	// Destroy kills the instance if it still runs, waits for it and
	// releases everything the runtime holds for it (cgroups, state
	// directories, mounts). It is idempotent.
	Destroy() error
}

// Exit says how an instance ended.
type Exit struct {
	Code      int            // exit code when the process exited normally
	Signal    syscall.Signal // terminating signal, or 0
	OOMKilled bool           // the kernel OOM killer ended it (memory limit)
	Err       error          // the runtime could not tell (wait failed)
}

// Success reports whether the process exited with code 0.
func (e Exit) Success() bool { return e.Err == nil && e.Signal == 0 && e.Code == 0 && !e.OOMKilled }

func (e Exit) String() string {
	switch {
	case e.Err != nil:
		return "ended: " + e.Err.Error()
	case e.OOMKilled:
		return "was killed by the OOM killer (memory limit reached)"
	case e.Signal != 0:
		return fmt.Sprintf("was killed by signal %s", signalName(e.Signal))
	default:
		return fmt.Sprintf("exited with code %d", e.Code)
	}
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGSYS:
		return "SIGSYS"
	}
	return fmt.Sprintf("%d (%s)", int(s), s.String())
}

// Adopter is implemented by runtimes whose instances can outlive the
// process image of the daemon that started them: when the daemon upgrades
// in place (it executes its new binary in its own process, keeping its
// children and the descriptors it chose to keep), the new image adopts the
// instances the old one handed over instead of starting them again.
type Adopter interface {
	// Adopt takes over the running instance id of plugin, whose first
	// process was pid. It finds the instance by what the runtime itself
	// recorded (its container state and cgroup), never by the pid alone:
	// it fails unless that instance is running with pid as its first
	// process, pid sits in the instance's own cgroup and is a child of
	// this process. The instance is then this Runtime's as if it had
	// started it: Sweep leaves it alone and Destroy removes it.
	Adopt(ctx context.Context, id, plugin string, pid int) (Process, error)
}

// Preparer is implemented by runtimes that can set an instance up ahead of
// need — a pre-started sandbox — so that starting it later costs little
// more than the plugin's own start-up. The supervisor keeps one prepared
// instance per running plugin, ready for its next restart.
type Preparer interface {
	// PrepareInstance does everything Start does except executing the
	// plugin. spec.Control and the output writers are held by the prepared
	// instance when it returns.
	PrepareInstance(ctx context.Context, spec *Spec) (Prepared, error)
}

// Prepared is an instance waiting to execute its plugin. It must be
// started or discarded.
type Prepared interface {
	// Pid is the host pid of the waiting instance.
	Pid() int
	// Start executes the plugin; it may be called once.
	Start(ctx context.Context) (Process, error)
	// Discard destroys the instance unless it was started.
	Discard() error
}
