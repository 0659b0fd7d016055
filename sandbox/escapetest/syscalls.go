//go:build linux

package escapetest

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Syscalls lists the names Syscall knows, privileged or filtered calls first,
// then the few harmless ones the probe uses as controls (personality-query,
// socket-tcp, socket-unix, syncfs, clone3).
var Syscalls = []string{
	"mount", "umount2", "unshare", "setns", "ptrace", "process_vm_readv", "bpf",
	"keyctl", "add_key", "request_key", "perf_event_open", "kexec_load",
	"kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
	"swapon", "swapoff", "pivot_root", "chroot", "open_by_handle_at", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register", "personality-set",
	"sethostname", "setdomainname", "syslog", "acct", "settimeofday", "clock_settime",
	"clone-newuser", "clone-newnet", "socket-raw", "socket-packet", "socket-netlink",
	"socketpair-inet",
	"personality-query", "socket-tcp", "socket-unix", "syncfs", "clone3",
}

// Syscall makes one privileged or filtered system call, named as in
// Syscalls, and returns its error (nil when it succeeded). Arguments are
// chosen so that a permitted call would fail differently (EFAULT, EBADF,
// EINVAL, ESRCH) or succeed harmlessly, which tells a filter's EPERM from
// the kernel's answer.
func Syscall(name string) error {
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
