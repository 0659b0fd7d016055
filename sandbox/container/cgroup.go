//go:build linux && cgo

package container

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// cgroupPath is the instance's cgroup path, the same in every hierarchy:
// /<parent>/<id>. It is absolute so that instances never nest under the
// daemon's own cgroup, and so that Sweep finds them wherever the daemon that
// made them ran.
func (r *Runtime) cgroupPath(id string) string {
	return "/" + r.cfg.CgroupParent + "/" + id
}

// cgroupMountpoints lists the mount points of every cgroup hierarchy: each
// v1 controller or named hierarchy, and the v2 tree.
func cgroupMountpoints() ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return nil, fmt.Errorf("list cgroup mounts: %w", err)
	}
	seen := make(map[string]bool)
	var out []string
	for _, m := range mounts {
		if !seen[m.Mountpoint] {
			seen[m.Mountpoint] = true
			out = append(out, m.Mountpoint)
		}
	}
	return out, nil
}

// cgroupDirs returns the directories of cgroup path rel in every hierarchy,
// existing or not.
func cgroupDirs(rel string) ([]string, error) {
	mps, err := cgroupMountpoints()
	if err != nil {
		return nil, err
	}
	dirs := make([]string, 0, len(mps))
	for _, mp := range mps {
		dirs = append(dirs, filepath.Join(mp, rel))
	}
	return dirs, nil
}

// oomKills reads how many processes the kernel OOM killer has killed in the
// memory cgroup at dir: the oom_kill counter of memory.oom_control (v1) or
// memory.events (v2). It returns 0 when neither is readable.
func oomKills(dir string) int64 {
	if dir == "" {
		return 0
	}
	for _, name := range []string{"memory.oom_control", "memory.events"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			key, val, ok := strings.Cut(sc.Text(), " ")
			if ok && key == "oom_kill" {
				n, _ := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
				return n
			}
		}
	}
	return 0
}

// removeCgroup kills whatever still runs in cgroup path rel, in every
// hierarchy, and removes its directories. It is the fallback for instances
// whose libcontainer state is missing or unreadable, and it tidies up
// directories libcontainer left. Missing directories are not an error.
func removeCgroup(ctx context.Context, rel string) error {
	dirs, err := cgroupDirs(rel)
	if err != nil {
		return err
	}
	// A frozen v1 cgroup does not act on SIGKILL until it is thawed.
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "freezer.state")); err == nil {
			_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0)
		}
	}
	for {
		alive := 0
		for _, d := range dirs {
			pids, err := cgroupProcs(d)
			if err != nil {
				continue
			}
			for _, pid := range pids {
				alive++
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if alive == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s: %d process(es) still running: %w", rel, alive, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	var errs []error
	for _, d := range dirs {
		if err := rmdirRetry(ctx, d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cgroupProcs lists the pids in the cgroup directory dir.
func cgroupProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// rmdirRetry removes an empty cgroup directory. The kernel answers EBUSY for
// a short while after the last task has exited, so it retries until ctx ends.
func rmdirRetry(ctx context.Context, dir string) error {
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: %w (%w)", dir, err, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
