// Command fdecho is the benchmark's spawn probe: a static Go binary that
// answers "ping" with "ok pong" on fd 3, the way a plugin answers the
// daemon's first message, and exits when fd 3 reaches EOF.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
)

func main() {
	// Use fd 3 the way the plugin SDK does: as a net.Conn.
	ctl, err := net.FileConn(os.NewFile(3, "control"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fdecho: no control socket at fd 3:", err)
		os.Exit(2)
	}
	in := bufio.NewScanner(ctl)
	for in.Scan() {
		reply := "err unknown command"
		if in.Text() == "ping" {
			reply = "ok pong"
		}
		if _, err := fmt.Fprintln(ctl, reply); err != nil {
			os.Exit(3)
		}
	}
}
