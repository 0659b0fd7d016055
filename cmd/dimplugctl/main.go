// Command dimplugctl is the operator's CLI for dimplugd: install, inspect,
// enable, disable, restart and remove plugins, and read their logs.
//
// Exit codes: 0 success, 1 the operation failed, 2 bad usage, and for a
// failure of a known class (sdk-go/errdefs): 3 not found, 4 already exists,
// 5 invalid, 6 conflict, 7 unavailable, 8 permission denied.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
