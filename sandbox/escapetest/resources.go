//go:build linux

package escapetest

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// WriteFile writes n zero bytes to path (created or truncated) and syncs it.
func WriteFile(path string, n int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for written := 0; written < n; {
		chunk := min(len(buf), n-written)
		m, err := f.Write(buf[:chunk])
		written += m
		if err != nil {
			return err
		}
	}
	return f.Sync()
}

// ConnectTCP opens a TCP connection to addr and closes it at once.
func ConnectTCP(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// Allocate allocates mib MiB in 1 MiB blocks, touching every page, and
// returns how many it got. Under a memory limit it does not return: the
// kernel's OOM killer ends the process.
func Allocate(mib int) int {
	var keep [][]byte
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	runtime.KeepAlive(keep)
	return len(keep)
}

// ForkChildren forks up to n children that only pause, with the raw clone
// system call (the children run no Go code that could need the runtime), and
// returns their pids and the error of the fork that failed (nil when all n
// succeeded). The caller owns the children: see KillChildren.
func ForkChildren(n int) (pids []int, err error) {
	for i := 0; i < n; i++ {
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if e != 0 {
			return pids, e
		}
		if pid == 0 {
			for { // ppoll with nothing to wait for: pause(2), on every arch
				unix.RawSyscall6(unix.SYS_PPOLL, 0, 0, 0, 0, 0, 0)
			}
		}
		pids = append(pids, int(pid))
	}
	return pids, nil
}

// KillChildren kills and reaps the given child processes.
func KillChildren(pids []int) error {
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pid := range pids {
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				errs = append(errs, err)
			}
			break
		}
	}
	return errors.Join(errs...)
}

// warmThreads makes the Go runtime start n spare OS threads and park them
// idle, so that it need not create one while a fork bomb holds every task
// the pids limit allows (a failed thread creation is fatal to a Go
// program).
func warmThreads(n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// A locked, sleeping goroutine keeps its thread busy, so
			// the others each need a thread of their own; unlocking
			// returns the thread to the runtime's idle list.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			time.Sleep(20 * time.Millisecond)
		})
	}
	wg.Wait()
}
