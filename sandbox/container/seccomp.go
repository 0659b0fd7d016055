//go:build linux && cgo

package container

import (
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// The seccomp policy is an allowlist: every system call not named here fails
// with EPERM. It admits what a static Go program (and ordinary C or Rust
// code) needs to compute, manage its threads and memory, use files it can
// already reach, and talk over the sockets it inherits or creates for local
// IPC. It leaves out everything that changes the system or the sandbox
// itself: mounts, namespaces, tracing, BPF, keyrings, kernel modules,
// io_uring, perf, swap, the clock, the hostname, the kernel log, reboots.
//
// Some calls are allowed only with certain arguments:
//   - clone without any CLONE_NEW* flag (threads and fork, no namespaces);
//   - clone3 fails with ENOSYS, because its flags sit in memory where a
//     filter cannot look; Go and glibc then fall back to clone;
//   - socket only for AF_UNIX, AF_INET and AF_INET6 with stream, datagram
//     or seqpacket types (no raw, packet or netlink sockets);
//   - socketpair only for AF_UNIX;
//   - personality only to query it or to ask for plain PER_LINUX;
//   - ioctl only for a few terminal and file-descriptor queries.

// allowedSyscalls are allowed with any arguments.
var allowedSyscalls = []string{
	// memory
	"brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "msync", "mincore",
	"memfd_create",
	// files and directories the plugin can already reach
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
	"preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
	"lseek", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
	"getdents", "getdents64", "fcntl", "dup", "dup2", "dup3", "access", "faccessat",
	"faccessat2", "readlink", "readlinkat", "getcwd", "chdir", "fchdir", "mkdir",
	"mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
	"link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
	"fchmodat2", "chown", "fchown", "lchown", "fchownat", "truncate", "ftruncate",
	"fsync", "fdatasync", "fallocate", "fadvise64", "utimensat", "flock", "umask",
	"sendfile", "splice", "tee", "copy_file_range", "pipe", "pipe2",
	"inotify_init1", "inotify_add_watch", "inotify_rm_watch",
	// waiting for file descriptors
	"poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
	"epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
	"timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
	// signals (only processes in the plugin's own pid namespace are visible)
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
	"rt_sigsuspend", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
	"sigaltstack", "kill", "tkill", "tgkill", "pause", "restart_syscall",
	"alarm", "setitimer", "getitimer", "timer_create", "timer_settime",
	"timer_gettime", "timer_getoverrun", "timer_delete",
	// processes and threads
	"fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
	"pidfd_open", "pidfd_send_signal",
	"set_tid_address", "set_robust_list", "get_robust_list", "futex", "futex_waitv",
	"rseq", "arch_prctl", "prctl", "getpid", "getppid", "gettid", "getuid",
	"geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
	"getpgid", "getpgrp", "getsid", "setsid", "setpgid", "sched_yield",
	"sched_getaffinity", "sched_setaffinity", "sched_getparam",
	"sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
	"sched_rr_get_interval", "getpriority", "setpriority", "getrlimit",
	"setrlimit", "prlimit64", "getrusage", "times", "sysinfo", "uname", "capget",
	"getcpu",
	// time and randomness
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
	"gettimeofday", "time", "getrandom",
	// sockets (creation is restricted below)
	"connect", "bind", "listen", "accept", "accept4", "getsockname", "getpeername",
	"setsockopt", "getsockopt", "shutdown", "sendto", "recvfrom", "sendmsg",
	"recvmsg", "sendmmsg", "recvmmsg",
}

// namespaceCloneFlags are the clone flags that create namespaces; clone is
// denied when any of them is set.
const namespaceCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// allowedIoctls are the ioctl requests a plugin may make: terminal queries
// (isatty), bytes available (FIONREAD), and non-blocking or close-on-exec switches.
var allowedIoctls = []uint64{
	unix.TCGETS, unix.TIOCGWINSZ, unix.TIOCINQ, ioctlFIONBIO, ioctlFIOCLEX, ioctlFIONCLEX,
}

// Generic ioctl numbers (asm-generic/ioctls.h, shared by x86-64 and arm64)
// that x/sys/unix does not export.
const (
	ioctlFIONBIO  = 0x5421
	ioctlFIONCLEX = 0x5450
	ioctlFIOCLEX  = 0x5451
)

// seccompPolicy builds the plugin's seccomp filter. It is a fresh value for
// every call, as libcontainer keeps a reference in the container's config.
func seccompPolicy() *configs.Seccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	s := &configs.Seccomp{
		DefaultAction:   configs.Errno,
		DefaultErrnoRet: &eperm,
	}
	allow := func(name string, args ...*configs.Arg) {
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: name, Action: configs.Allow, Args: args})
	}
	for _, name := range allowedSyscalls {
		allow(name)
	}

	// clone: flags are the first argument on x86-64 and arm64.
	allow("clone", &configs.Arg{Index: 0, Value: namespaceCloneFlags, ValueTwo: 0, Op: configs.MaskEqualTo})
	s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "clone3", Action: configs.Errno, ErrnoRet: &enosys})

	const typeMask = 0xf // SOCK_TYPE_MASK: the type without SOCK_NONBLOCK/SOCK_CLOEXEC
	for _, domain := range []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6} {
		for _, typ := range []uint64{unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET} {
			allow("socket",
				&configs.Arg{Index: 0, Value: domain, Op: configs.EqualTo},
				&configs.Arg{Index: 1, Value: typeMask, ValueTwo: typ, Op: configs.MaskEqualTo})
		}
	}
	allow("socketpair", &configs.Arg{Index: 0, Value: unix.AF_UNIX, Op: configs.EqualTo})

	allow("personality", &configs.Arg{Index: 0, Value: 0xffffffff, Op: configs.EqualTo})
	allow("personality", &configs.Arg{Index: 0, Value: perLinux, Op: configs.EqualTo})

	for _, req := range allowedIoctls {
		allow("ioctl", &configs.Arg{Index: 1, Value: req, Op: configs.EqualTo})
	}
	return s
}

// perLinux is the PER_LINUX personality (plain Linux semantics).
const perLinux = 0
