// Command probe is the test plugin for the container runtime's tests. It
// reads one command per line from fd 3 and answers each with one line,
// "ok ..." or "err <ERRNO or message>", and exits when fd 3 reaches EOF.
//
// Commands:
//
//	ping                 ok pong
//	pid                  ok <pid>
//	status               ok uid_map=... CapEff=... NoNewPrivs=... Seccomp=... Max_open_files=...
//	read PATH            ok <first bytes, quoted>
//	write PATH BYTES     writes BYTES zero bytes to PATH (created or truncated)
//	syscall NAME         tries one privileged or filtered operation
//	connect ADDR         TCP connect to ADDR
//	alloc MIB            allocates and touches MIB MiB
//	exec                 runs itself as a child process
//	fork N               forks up to N children that just pause
//	exit CODE            exits with CODE
package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "err " + unix.ErrnoName(errno)
	}
	return "err " + strings.ReplaceAll(err.Error(), "\n", " ")
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
		return writeFile(arg(1), n)
	case "syscall":
		if err := trySyscall(arg(1)); err != nil {
			return errReply(err)
		}
		return "ok"
	case "connect":
		c, err := net.DialTimeout("tcp", arg(1), 2*time.Second)
		if err != nil {
			return errReply(err)
		}
		c.Close()
		return "ok connected"
	case "alloc":
		mib, _ := strconv.Atoi(arg(1))
		var keep [][]byte
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		return fmt.Sprintf("ok allocated %d MiB", len(keep))
	case "exec":
		out, err := exec.Command("/proc/self/exe", "child").Output()
		if err != nil {
			return errReply(err)
		}
		return "ok " + strings.TrimSpace(string(out))
	case "fork":
		n, _ := strconv.Atoi(arg(1))
		return forkPausers(n)
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

func writeFile(path string, n int) string {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return errReply(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for written := 0; written < n; {
		chunk := min(len(buf), n-written)
		m, err := f.Write(buf[:chunk])
		written += m
		if err != nil {
			return errReply(err)
		}
	}
	if err := f.Sync(); err != nil {
		return errReply(err)
	}
	return "ok"
}

// trySyscall makes one call the sandbox should refuse. Arguments are chosen
// so that a permitted call would fail differently (EFAULT, EBADF, EINVAL,
// ESRCH) or succeed harmlessly, which lets the test tell a filter's EPERM
// from the kernel's answer.
func trySyscall(name string) error {
	raw := func(trap uintptr, a ...uintptr) error {
		var args [6]uintptr
		copy(args[:], a)
		_, _, e := unix.Syscall6(trap, args[0], args[1], args[2], args[3], args[4], args[5])
		if e != 0 {
			return e
		}
		return nil
	}
	socket := func(domain, typ, proto int) error {
		fd, err := unix.Socket(domain, typ, proto)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	switch name {
	case "mount":
		return unix.Mount("none", "/tmp", "tmpfs", 0, "")
	case "umount2":
		return raw(unix.SYS_UMOUNT2, 0, 0)
	case "unshare":
		// A permitted unshare(CLONE_NEWUSER) fails with EINVAL in a
		// multi-threaded process.
		return unix.Unshare(unix.CLONE_NEWUSER)
	case "setns":
		return raw(unix.SYS_SETNS, ^uintptr(0), 0)
	case "ptrace":
		return raw(unix.SYS_PTRACE, unix.PTRACE_ATTACH, 999999)
	case "process_vm_readv":
		return raw(unix.SYS_PROCESS_VM_READV, 999999, 0, 0, 0, 0, 0)
	case "bpf":
		return raw(unix.SYS_BPF, 0, 0, 0)
	case "keyctl":
		return raw(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, ^uintptr(2), 0) // KEY_SPEC_SESSION_KEYRING
	case "add_key":
		return raw(unix.SYS_ADD_KEY, 0, 0, 0, 0, 0)
	case "request_key":
		return raw(unix.SYS_REQUEST_KEY, 0, 0, 0, 0)
	case "perf_event_open":
		return raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0)
	case "kexec_load":
		return raw(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0)
	case "kexec_file_load":
		return raw(unix.SYS_KEXEC_FILE_LOAD, ^uintptr(0), ^uintptr(0), 0, 0, 0)
	case "init_module":
		return raw(unix.SYS_INIT_MODULE, 0, 0, 0)
	case "finit_module":
		return raw(unix.SYS_FINIT_MODULE, ^uintptr(0), 0, 0)
	case "delete_module":
		return raw(unix.SYS_DELETE_MODULE, 0, 0)
	case "reboot":
		return raw(unix.SYS_REBOOT, 0, 0, 0, 0)
	case "swapon":
		return raw(unix.SYS_SWAPON, 0, 0)
	case "swapoff":
		return raw(unix.SYS_SWAPOFF, 0)
	case "pivot_root":
		return raw(unix.SYS_PIVOT_ROOT, 0, 0)
	case "chroot":
		return raw(unix.SYS_CHROOT, 0)
	case "open_by_handle_at":
		return raw(unix.SYS_OPEN_BY_HANDLE_AT, ^uintptr(0), 0, 0)
	case "userfaultfd":
		fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, 0, 0, 0)
		if e != 0 {
			return e
		}
		unix.Close(int(fd))
		return nil
	case "io_uring_setup":
		return raw(unix.SYS_IO_URING_SETUP, 1, 0)
	case "io_uring_enter":
		return raw(unix.SYS_IO_URING_ENTER, ^uintptr(0), 0, 0, 0, 0, 0)
	case "io_uring_register":
		return raw(unix.SYS_IO_URING_REGISTER, ^uintptr(0), 0, 0, 0)
	case "personality-set":
		return raw(unix.SYS_PERSONALITY, 0x0400000) // READ_IMPLIES_EXEC
	case "personality-query":
		return raw(unix.SYS_PERSONALITY, 0xffffffff)
	case "sethostname":
		return unix.Sethostname([]byte("escaped"))
	case "setdomainname":
		return unix.Setdomainname([]byte("escaped"))
	case "syslog":
		return raw(unix.SYS_SYSLOG, 10, 0, 0) // SYSLOG_ACTION_SIZE_BUFFER
	case "acct":
		return raw(unix.SYS_ACCT, 0)
	case "settimeofday":
		return raw(unix.SYS_SETTIMEOFDAY, 0, 0) // a no-op if permitted
	case "clock_settime":
		return raw(unix.SYS_CLOCK_SETTIME, unix.CLOCK_REALTIME, 0)
	case "syncfs":
		// Harmless and unprivileged, but not on the allowlist.
		return raw(unix.SYS_SYNCFS, ^uintptr(0))
	case "clone-newuser":
		return cloneFlags(unix.CLONE_NEWUSER)
	case "clone-newnet":
		return cloneFlags(unix.CLONE_NEWNET)
	case "clone3":
		return raw(unix.SYS_CLONE3, 0, 0)
	case "socket-raw":
		return socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	case "socket-packet":
		return socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	case "socket-netlink":
		return socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
	case "socket-tcp":
		return socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	case "socket-unix":
		return socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	case "socketpair-inet":
		_, err := unix.Socketpair(unix.AF_INET, unix.SOCK_STREAM, 0)
		return err
	}
	return fmt.Errorf("unknown syscall test %q", name)
}

// cloneFlags tries a fork with extra clone flags. Should the kernel allow it,
// the child exits at once.
func cloneFlags(flags uintptr) error {
	pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, flags|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return e
	}
	if pid == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	var ws unix.WaitStatus
	unix.Wait4(int(pid), &ws, 0, nil)
	return nil
}

// forkPausers forks up to n children that only pause, with the raw clone
// system call (the children run no Go code), and reports how many it got
// and how the next fork failed.
func forkPausers(n int) string {
	for i := 0; i < n; i++ {
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if e != 0 {
			return fmt.Sprintf("ok forked=%d err=%s", i, unix.ErrnoName(e))
		}
		if pid == 0 {
			for {
				unix.RawSyscall(unix.SYS_PAUSE, 0, 0, 0)
			}
		}
	}
	return fmt.Sprintf("ok forked=%d err=none", n)
}
