// Command dimplugd is the dimplugd plugin daemon: it runs every enabled
// plugin in its own sandbox and serves hosts (Dim) on its host socket and the
// operator CLI on its control socket. It maps flags onto daemon.Config and calls daemon.Start; the
// daemon package holds everything else.
//
// Exit codes: 0 clean shutdown, 1 the daemon failed, 2 bad usage.
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
