// Command probe is the test plugin for the container runtime's tests. It
// reads one command per line from fd 3 and answers each with one line,
// "ok ..." or "err <ERRNO or message>", and exits when fd 3 reaches EOF. The
// escape attempts themselves live in package sandbox/escapetest, shared with
// the daemon's hostile-plugin suite.
//
// Commands:
//
//	ping                 ok pong
//	pid                  ok <pid>
//	status               ok uid_map=... CapEff=... NoNewPrivs=... Seccomp=... Max_open_files=...
//	read PATH            ok <first bytes, quoted>
//	write PATH BYTES     writes BYTES zero bytes to PATH (created or truncated)
//	syscall NAME         tries one privileged or filtered operation (escapetest.Syscall)
//	connect ADDR         TCP connect to ADDR
//	alloc MIB            allocates and touches MIB MiB
//	exec                 runs itself as a child process
//	fork N               forks up to N children that just pause
//	exit CODE            exits with CODE
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/dimplugd/dimplugd/sandbox/escapetest"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		fmt.Println("child ok")
		return
	}
	// Use fd 3 the way an SDK would: as a net.Conn.
	ctl, err := net.FileConn(os.NewFile(3, "control"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe: control socket at fd 3:", err)
		os.Exit(2)
	}
	in := bufio.NewScanner(ctl)
	for in.Scan() {
		reply := run(strings.Fields(in.Text()))
		if _, err := fmt.Fprintln(ctl, reply); err != nil {
			os.Exit(3)
		}
	}
	// EOF (or an error) on the control socket: the host is gone.
	os.Exit(0)
}

func errReply(err error) string {
	return "err " + escapetest.ErrnoName(err)
}

func run(args []string) string {
	if len(args) == 0 {
		return "err empty command"
	}
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	switch args[0] {
	case "ping":
		return "ok pong"
	case "pid":
		return "ok " + strconv.Itoa(os.Getpid())
	case "status":
		return status()
	case "read":
		data, err := os.ReadFile(arg(1))
		if err != nil {
			return errReply(err)
		}
		if len(data) > 64 {
			data = data[:64]
		}
		return "ok " + strconv.Quote(string(data))
	case "write":
		n, _ := strconv.Atoi(arg(2))
		if err := escapetest.WriteFile(arg(1), n); err != nil {
			return errReply(err)
		}
		return "ok"
	case "syscall":
		if err := escapetest.Syscall(arg(1)); err != nil {
			return errReply(err)
		}
		return "ok"
	case "connect":
		if err := escapetest.ConnectTCP(arg(1)); err != nil {
			return errReply(err)
		}
		return "ok connected"
	case "alloc":
		mib, _ := strconv.Atoi(arg(1))
		return fmt.Sprintf("ok allocated %d MiB", escapetest.Allocate(mib))
	case "exec":
		out, err := exec.Command("/proc/self/exe", "child").Output()
		if err != nil {
			return errReply(err)
		}
		return "ok " + strings.TrimSpace(string(out))
	case "fork":
		// The children pause until the test destroys the instance.
		n, _ := strconv.Atoi(arg(1))
		pids, err := escapetest.ForkChildren(n)
		errName := "none"
		if err != nil {
			errName = escapetest.ErrnoName(err)
		}
		return fmt.Sprintf("ok forked=%d err=%s", len(pids), errName)
	case "exit":
		code, _ := strconv.Atoi(arg(1))
		os.Exit(code)
	}
	return "err unknown command " + args[0]
}

func status() string {
	uidMap, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return errReply(err)
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return errReply(err)
	}
	fields := []string{"uid_map=" + strings.Join(strings.Fields(string(uidMap)), ":")}
	for _, line := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "Uid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp":
			fields = append(fields, k+"="+strings.Join(strings.Fields(v), ":"))
		}
	}
	limits, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return errReply(err)
	}
	for _, line := range strings.Split(string(limits), "\n") {
		for _, name := range []string{"Max open files", "Max core file size"} {
			if rest, ok := strings.CutPrefix(line, name); ok {
				f := strings.Fields(rest)
				if len(f) >= 2 {
					fields = append(fields, strings.ReplaceAll(name, " ", "_")+"="+f[0]+":"+f[1])
				}
			}
		}
	}
	return "ok " + strings.Join(fields, " ")
}
