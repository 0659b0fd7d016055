//go:build linux && cgo

package container

import (
	"os"
	"runtime"

	"github.com/opencontainers/runc/libcontainer"

	// Device rules in the container's cgroup only work with the devices
	// controller code registered.
	_ "github.com/opencontainers/cgroups/devices"
	// The C constructor that sets up namespaces when the binary is
	// re-executed as a container's init.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func init() {
	// libcontainer runs setns() from a goroutine locked to its thread; if
	// that goroutine ever lands on the main thread, Go parks the thread
	// (rather than killing it) and the process's main thread is left in a
	// dead container's mount namespace. Keeping the main goroutine wired to
	// the main thread prevents that.
	runtime.LockOSThread()
	// A container's init starts here, not in main: Go initializes the
	// packages that sort after this one and do not feed it (in dimplugd:
	// the JSON Schema validator, which compiles its meta-schemas, 6–7 ms,
	// the metrics, the daemon) only after it, and a container's init
	// needs none of them. Every sandbox's start is that much shorter.
	Init()
}

// Init runs libcontainer's container init when this process is one, and
// returns otherwise. The package's own init calls it, as early as Go's
// package initialization allows; binaries that use Runtime call it too,
// first thing in main (and in TestMain), before flags or commands are
// parsed, so that it is plain where a container's init goes: the runtime
// starts each container by re-executing the current binary as
// "<argv0> init" with libcontainer's pipes in the environment. In that case
// Init does not return.
func Init() {
	if !isContainerInit() {
		return
	}
	libcontainer.Init() // never returns
}

// isContainerInit reports whether this process was started by libcontainer
// as a container's init. Checking the environment as well as argv[1] keeps a
// CLI subcommand named "init" working.
func isContainerInit() bool {
	return len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != ""
}
