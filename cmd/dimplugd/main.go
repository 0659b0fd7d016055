// Command dimplugd is the dimplugd plugin daemon: it runs every enabled
// plugin in its own sandbox and serves hosts (Dim) on its host socket and the
// operator CLI on its control socket. It maps flags onto daemon.Config and calls daemon.Start; the
// daemon package holds everything else.
//
// Exit codes: 0 success (a clean shutdown, for serve), 1 failed, 2 bad
// usage, and by the class of the error as dimplugctl's (errdefs.ExitCode):
// 3 not found, 6 conflict (the registry is damaged), 7 unavailable (the
// state directory is in use).
package main

import (
	"os"

	"github.com/dimplugd/dimplugd/sandbox/container"
)

func main() {
	// The container runtime re-executes this binary as the sandbox's init
	// process; that must happen before anything else, cobra included.
	container.Init()
	os.Exit(run(os.Args[1:]))
}
