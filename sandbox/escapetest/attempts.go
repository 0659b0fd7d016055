//go:build linux

package escapetest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// attempts is the registry behind All and Lookup.
var attempts = []Attempt{
	// The host's files.
	{Name: "read-shadow", Description: "read the host's /etc/shadow", Run: func(string) Result {
		var s steps
		readPath(&s, "/etc/shadow")
		return s.result()
	}},
	{Name: "read-host-files", Description: "read or list host files and directories outside the plugin's own", Run: readHostFiles},
	{Name: "read-state-dir", Description: "read the daemon's state directory", Arg: "the daemon's state directory", Run: readDirAttempt},
	{Name: "read-plugin-files", Description: "read another plugin's installed files", Arg: "the other plugin's installed directory", Run: readDirAttempt},
	{Name: "write-outside-tmp", Description: "create, change or open for writing files outside /tmp, the plugin's own executable included", Run: writeOutsideTmp},
	{Name: "write-sys", Description: "open writable kernel and cgroup settings under /sys and /proc for writing (nothing is written)", Run: writeSys},
	{Name: "read-kernel-log", Description: "read the kernel log with syslog(2), /dev/kmsg and /proc/kmsg", Run: readKernelLog},
	{Name: "mknod-device", Description: "create a block device node for the host's first disk", Run: mknodDevice},

	// The host's network and sockets.
	{Name: "connect-loopback", Description: "connect to a TCP service on the host's loopback interface", Arg: "host:port of a host loopback listener", Run: connectLoopback},
	{Name: "connect-control-socket", Description: "connect to the daemon's control socket", Arg: "the daemon's socket path", Run: connectUnix},
	seccompAttempt("raw-socket", "socket-raw", "open a raw IP socket"),
	seccompAttempt("packet-socket", "socket-packet", "open a packet socket (sniff or forge link-layer traffic)"),
	seccompAttempt("netlink-socket", "socket-netlink", "open a netlink route socket (reconfigure interfaces and routes)"),

	// Kernel interfaces that change the system or the sandbox.
	seccompAttempt("mount", "mount", "mount a tmpfs over /tmp"),
	seccompAttempt("umount", "umount2", "unmount a file system"),
	seccompAttempt("unshare", "unshare", "unshare into a new user namespace (the first step of most namespace escapes)"),
	seccompAttempt("clone-newuser", "clone-newuser", "fork into a new user namespace"),
	seccompAttempt("setns", "setns", "join another namespace with setns"),
	seccompAttempt("ptrace", "ptrace", "attach to a process with ptrace"),
	seccompAttempt("process-vm-readv", "process_vm_readv", "read another process's memory with process_vm_readv"),
	seccompAttempt("bpf", "bpf", "load a BPF program or map"),
	seccompAttempt("keyctl", "keyctl", "use the kernel keyring with keyctl"),
	seccompAttempt("add-key", "add_key", "add a key to the kernel keyring"),
	seccompAttempt("perf-event-open", "perf_event_open", "open a perf event (kernel profiling, side channels)"),
	seccompAttempt("kexec-load", "kexec_load", "load a new kernel with kexec_load"),
	seccompAttempt("init-module", "init_module", "load a kernel module"),
	seccompAttempt("reboot", "reboot", "call reboot(2) (with arguments that would do nothing)"),
	seccompAttempt("pivot-root", "pivot_root", "change the root mount with pivot_root"),
	seccompAttempt("chroot", "chroot", "chroot (the classic escape from a chroot jail needs it)"),
	seccompAttempt("open-by-handle-at", "open_by_handle_at", "open a file by handle (the \"shocker\" escape)"),
	seccompAttempt("userfaultfd", "userfaultfd", "create a userfaultfd (a kernel-exploit helper)"),
	seccompAttempt("io-uring-setup", "io_uring_setup", "set up an io_uring (bypasses seccomp for the calls it makes)"),
	seccompAttempt("personality", "personality-set", "set the READ_IMPLIES_EXEC personality"),
	seccompAttempt("sethostname", "sethostname", "change the hostname"),
	seccompAttempt("setdomainname", "setdomainname", "change the NIS domain name"),
	seccompAttempt("settimeofday", "settimeofday", "set the system clock"),
	{Name: "raise-rlimit", Description: "raise the open-files limit above its hard limit", Run: raiseRlimit},

	// Other processes.
	{Name: "kill-daemon", Description: "signal the daemon's process (with signal 0: a check that it could)", Arg: "the daemon's host pid", Run: killDaemon},
	{Name: "kill-host-init", Description: "signal the host's pid 1 (with signal 0)", Run: killHostInit},
	{Name: "kill-all", Description: "signal every process it may (kill(-1), with signal 0)", Run: func(string) Result {
		return blockedIf("kill(-1, 0)", unix.Kill(-1, 0), "ESRCH")
	}},
	{Name: "see-host-processes", Description: "list processes other than its own in /proc", Run: seeHostProcesses},

	// Resource bombs.
	{Name: "fill-tmp", Description: "write to /tmp until it is full, then free it", Arg: "optional directory (default /tmp)", Run: fillTmp},
	{Name: "fill-tmp-inodes", Description: "create empty files in /tmp until it runs out of inodes, then remove them", Run: fillTmpInodes},
	{Name: "fd-exhaustion", Description: "open file descriptors until the kernel refuses, then close them", Run: fdExhaustion},
	{Name: "fork-bomb", Description: "fork until the kernel refuses, then kill and reap the children", Arg: "optional maximum number of forks (default 100000)", Run: forkBomb},
	{Name: "cpu-spin", Description: "spin twice as many goroutines as there are CPUs, for a while", Arg: "optional duration (default 2s)", Run: cpuSpin},
	{Name: "memory-bomb", Description: "allocate and touch memory until killed", Arg: "optional MiB to try (default 4096)", Run: func(arg string) Result {
		mib := intArg(arg, 4096)
		got := Allocate(mib)
		return Result{Detail: fmt.Sprintf("allocated and touched %d MiB without being stopped", got)}
	}},
}

func seccompAttempt(name, call, desc string) Attempt {
	return Attempt{Name: name, Description: desc, Run: func(string) Result {
		return blockedIf(call, Syscall(call), "EPERM")
	}}
}

func intArg(arg string, def int) int {
	if n, err := strconv.Atoi(arg); err == nil && n > 0 {
		return n
	}
	return def
}

// readPath tries to see path: a path that exists is an escape, whether or
// not its contents can be read.
func readPath(s *steps, path string) {
	st, err := os.Stat(path)
	if err != nil {
		s.fail("stat "+path, err)
		return
	}
	if st.IsDir() {
		es, err := os.ReadDir(path)
		if err != nil {
			s.succeed(path + " is visible (listing it failed: " + ErrnoName(err) + ")")
			return
		}
		s.succeed(fmt.Sprintf("listed %s: %d entries", path, len(es)))
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		s.succeed(path + " is visible (reading it failed: " + ErrnoName(err) + ")")
		return
	}
	s.succeed(fmt.Sprintf("read %d bytes of %s", len(data), path))
}

func readHostFiles(string) Result {
	var s steps
	for _, p := range []string{"/etc/passwd", "/etc/hostname", "/root", "/home", "/var/log", "/usr/bin", "/boot", "/run", "/sys/fs/cgroup"} {
		readPath(&s, p)
	}
	return s.result()
}

// readDirAttempt reads the host directory arg and the plugin manifest a
// plugin directory would hold.
func readDirAttempt(arg string) Result {
	if arg == "" {
		return needArg("a host directory")
	}
	var s steps
	readPath(&s, arg)
	readPath(&s, filepath.Join(arg, "plugin.toml"))
	return s.result()
}

// escapeName is the file name attempts try to create outside /tmp.
const escapeName = "escaped-by-plugin"

func writeOutsideTmp(string) Result {
	var s steps
	create := func(path string) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			os.Remove(path)
		}
		s.try("create "+path, err, "created (and removed)")
	}
	for _, dir := range []string{"/", "/dev", "/proc", "/etc"} {
		create(filepath.Join(dir, escapeName))
	}
	s.try("mkdir /"+escapeName, os.Mkdir("/"+escapeName, 0o755), "created")
	os.Remove("/" + escapeName)
	if exe, err := os.Executable(); err != nil {
		s.fail("find own executable", err)
	} else {
		f, err := os.OpenFile(exe, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		s.try("open "+exe+" for writing", err, "opened")
		if st, err := os.Stat(exe); err == nil {
			// The same mode again: a change in name only.
			s.try("chmod "+exe, os.Chmod(exe, st.Mode().Perm()), "changed")
		}
	}
	return s.result()
}

// writablePaths are kernel and cgroup settings a plugin must not change.
var writablePaths = []string{
	"/proc/sys/kernel/hostname",
	"/proc/sys/kernel/core_pattern",
	"/proc/sys/vm/drop_caches",
	"/proc/sysrq-trigger",
	"/sys/kernel/uevent_helper",
	"/sys/fs/cgroup/memory/memory.limit_in_bytes",
	"/sys/fs/cgroup/pids/pids.max",
	"/sys/fs/cgroup/cgroup.procs",
	"/sys/class/net/lo/mtu",
	"/sys/power/state",
}

func writeSys(string) Result {
	var s steps
	for _, p := range writablePaths {
		// Opened only, never written: should the sandbox fail, nothing
		// changes.
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		s.try("open "+p+" for writing", err, "opened")
	}
	return s.result()
}

func readKernelLog(string) Result {
	var s steps
	buf := make([]byte, 4096)
	n, err := unix.Klogctl(3, buf) // SYSLOG_ACTION_READ_ALL
	s.try("syslog(SYSLOG_ACTION_READ_ALL)", err, fmt.Sprintf("read %d bytes", n))
	for _, p := range []string{"/dev/kmsg", "/proc/kmsg"} {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		s.try("open "+p, err, "opened")
	}
	return s.result()
}

func mknodDevice(string) Result {
	path := filepath.Join(os.TempDir(), "escapetest-sda")
	err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0)))
	if err == nil {
		os.Remove(path)
	}
	return blockedIf("mknod "+path+" (block 8:0)", err, "EPERM")
}

func connectLoopback(arg string) Result {
	if arg == "" {
		return needArg("host:port")
	}
	var s steps
	s.try("connect tcp "+arg, ConnectTCP(arg), "connected")
	return s.result()
}

func connectUnix(arg string) Result {
	if arg == "" {
		return needArg("a socket path")
	}
	var s steps
	c, err := net.DialTimeout("unix", arg, 2*time.Second)
	if err == nil {
		c.Close()
	}
	s.try("connect unix "+arg, err, "connected")
	return s.result()
}

func raiseRlimit(string) Result {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		return Result{Detail: "getrlimit: " + ErrnoName(err)}
	}
	raised := unix.Rlimit{Cur: old.Max + 1, Max: old.Max + 1}
	err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised)
	if err == nil {
		unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	}
	return blockedIf(fmt.Sprintf("setrlimit(RLIMIT_NOFILE, %d)", raised.Max), err, "EPERM")
}

func killDaemon(arg string) Result {
	pid, err := strconv.Atoi(arg)
	if err != nil || pid <= 1 {
		return needArg("the daemon's pid")
	}
	return blockedIf(fmt.Sprintf("kill(%d, 0)", pid), unix.Kill(pid, 0), "ESRCH", "EPERM")
}

func killHostInit(string) Result {
	if os.Getpid() == 1 {
		return Result{Blocked: true, Detail: "pid 1 here is this plugin itself: the host's init has no pid in its namespace"}
	}
	return blockedIf("kill(1, 0)", unix.Kill(1, 0), "ESRCH", "EPERM")
}

func seeHostProcesses(string) Result {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return Result{Blocked: true, Errno: errnoOf(err), Detail: "read /proc: " + ErrnoName(err)}
	}
	var others []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() {
			others = append(others, pid)
		}
	}
	if len(others) > 0 {
		return Result{Detail: fmt.Sprintf("sees %d other processes in /proc, e.g. %v", len(others), others[:min(len(others), 5)])}
	}
	return Result{Blocked: true, Detail: fmt.Sprintf("/proc shows only this process (pid %d)", os.Getpid())}
}

func fillTmp(arg string) Result {
	dir := arg
	if dir == "" {
		dir = os.TempDir()
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return Result{Detail: "statfs " + dir + ": " + ErrnoName(err)}
	}
	size := int64(fs.Blocks) * fs.Bsize
	f, err := os.CreateTemp(dir, "escapetest-fill-")
	if err != nil {
		return Result{Errno: errnoOf(err), Detail: "create a file in " + dir + ": " + ErrnoName(err)}
	}
	defer os.Remove(f.Name())
	defer f.Close()
	const most = 1 << 30
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	var written int64
	for written < most {
		n, err := f.Write(buf)
		written += int64(n)
		if err != nil {
			e := errnoOf(err)
			r := Result{Errno: e, Detail: fmt.Sprintf("wrote %d bytes to %s (%d bytes big), then %s; freed", written, dir, size, ErrnoName(err))}
			r.Blocked = (e == "ENOSPC" || e == "EDQUOT") && written <= size
			return r
		}
	}
	return Result{Detail: fmt.Sprintf("wrote %d bytes to %s without hitting a limit; freed", written, dir)}
}

func fillTmpInodes(string) Result {
	dir, err := os.MkdirTemp("", "escapetest-inodes-")
	if err != nil {
		return Result{Errno: errnoOf(err), Detail: "mkdir in /tmp: " + ErrnoName(err)}
	}
	defer os.RemoveAll(dir)
	const most = 200000
	for i := 0; i < most; i++ {
		fd, err := unix.Open(filepath.Join(dir, strconv.Itoa(i)), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			e := errnoOf(err)
			return Result{Blocked: e == "ENOSPC" || e == "EDQUOT", Errno: e,
				Detail: fmt.Sprintf("created %d empty files in %s, then %s; removed", i, dir, ErrnoName(err))}
		}
		unix.Close(fd)
	}
	return Result{Detail: fmt.Sprintf("created %d empty files in %s without hitting a limit; removed", most, dir)}
}

func fdExhaustion(string) Result {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return Result{Detail: "getrlimit: " + ErrnoName(err)}
	}
	before := openFDs()
	const most = 1 << 20
	var fds []int
	var err error
	for len(fds) < most {
		fd, e := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if e != nil {
			err = e
			break
		}
		fds = append(fds, fd)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if err == nil {
		return Result{Detail: fmt.Sprintf("opened %d descriptors without hitting a limit; closed them", len(fds))}
	}
	e := errnoOf(err)
	total := before + len(fds)
	return Result{
		Blocked: e == "EMFILE" && uint64(total) <= rl.Cur,
		Errno:   e,
		Detail: fmt.Sprintf("opened %d descriptors (%d in all, RLIMIT_NOFILE %d), then %s; closed them",
			len(fds), total, rl.Cur, ErrnoName(err)),
	}
}

// openFDs counts this process's open file descriptors, or returns 0.
func openFDs() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(es) - 1 // the directory read itself
}

// forkMu keeps fork bombs from overlapping: each must reap what it forked.
var forkMu sync.Mutex

func forkBomb(arg string) Result {
	most := intArg(arg, 100000)
	forkMu.Lock()
	defer forkMu.Unlock()
	warmThreads(4)
	start := time.Now()
	pids, err := ForkChildren(most)
	took := time.Since(start)
	kerr := KillChildren(pids)
	if err == nil {
		return Result{Detail: fmt.Sprintf("forked %d children in %s without being stopped; killed them", len(pids), took)}
	}
	e := errnoOf(err)
	r := Result{Blocked: e == "EAGAIN", Errno: e,
		Detail: fmt.Sprintf("forked %d children in %s, then %s; killed and reaped them", len(pids), took.Round(time.Millisecond), ErrnoName(err))}
	if kerr != nil {
		r.Detail += " (cleanup: " + kerr.Error() + ")"
	}
	return r
}

func cpuSpin(arg string) Result {
	d, err := time.ParseDuration(arg)
	if err != nil || d <= 0 {
		d = 2 * time.Second
	}
	n := 2 * runtime.GOMAXPROCS(0)
	want := float64(min(n, runtime.NumCPU()))
	cpu0 := cpuTime()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	var sink atomic.Uint64
	for range n {
		wg.Go(func() {
			var x uint64
			for time.Now().Before(deadline) {
				for i := range uint64(20000) {
					x += i * i
				}
			}
			sink.Add(x)
		})
	}
	wg.Wait()
	wall := time.Since(start)
	used := cpuTime() - cpu0
	cores := used.Seconds() / wall.Seconds()
	return Result{
		Blocked: cores < 0.9*want,
		Detail: fmt.Sprintf("spun %d goroutines for %s: used %.2f CPU-seconds, %.2f cores of the %.0f it tried to take",
			n, wall.Round(time.Millisecond), used.Seconds(), cores, want),
	}
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
