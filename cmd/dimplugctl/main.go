// Command dimplugctl is the operator's CLI for dimplugd: install, inspect,
// enable, disable, restart and remove plugins, and read their logs.
//
// Exit codes: 0 success, 1 the operation failed, 2 bad usage.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
