//go:build linux && cgo

package container

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"

	"github.com/dimplugd/dimplugd/sandbox"
)

// Adopt implements sandbox.Adopter. The daemon's new process image calls it
// for each instance the old image handed over, before Sweep: the instance's
// init is still this process's child (execve keeps the pid and children),
// so it is waited for here as if this Runtime had started it.
func (r *Runtime) Adopt(ctx context.Context, id, plugin string, pid int) (sandbox.Process, error) {
	fail := func(err error) error {
		return fmt.Errorf("adopt sandbox for plugin %q (instance %s, pid %d): %w", plugin, id, pid, err)
	}
	if !instanceName.MatchString(id) {
		return nil, fail(errors.New("not an instance id"))
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(err)
	}
	if err := r.reserve(id); err != nil {
		return nil, fail(err)
	}
	registered := false
	defer func() {
		if !registered {
			r.release(id)
		}
	}()
	// The container state libcontainer recorded is the instance's
	// identity: its init's pid and start time (Status compares the start
	// time, so a reused pid reads as stopped).
	c, err := libcontainer.Load(r.cfg.StateRoot, id)
	if err != nil {
		return nil, fail(fmt.Errorf("load container state: %w", err))
	}
	status, err := c.Status()
	if err != nil {
		return nil, fail(fmt.Errorf("container status: %w", err))
	}
	if status != libcontainer.Running {
		return nil, fail(fmt.Errorf("the container is %s, not running", status))
	}
	st, err := c.State()
	if err != nil {
		return nil, fail(fmt.Errorf("container state: %w", err))
	}
	if st.InitProcessPid != pid {
		return nil, fail(fmt.Errorf("the container's init is pid %d", st.InitProcessPid))
	}
	if err := inCgroup(pid, r.cgroupPath(id)); err != nil {
		return nil, fail(err)
	}
	if ppid, err := parentOf(pid); err != nil {
		return nil, fail(err)
	} else if ppid != os.Getpid() {
		return nil, fail(fmt.Errorf("its parent is pid %d, not this daemon (%d)", ppid, os.Getpid()))
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, fail(err)
	}
	p := &process{
		rt:     r,
		id:     id,
		plugin: plugin,
		c:      c,
		lp:     proc,
		pid:    pid,
		rootfs: r.rootfsDir(id),
		done:   make(chan struct{}),
	}
	p.memDir = st.CgroupPaths["memory"]
	if p.memDir == "" {
		p.memDir = st.CgroupPaths[""] // cgroup v2
	}
	r.addInit(pid)
	go p.wait()
	r.register(id, p)
	registered = true
	return p, nil
}

var _ sandbox.Adopter = (*Runtime)(nil)

// inCgroup checks that pid is a member of cgroup path want (absolute, as
// cgroupPath returns) in the hierarchies the Runtime limits it with: the
// unified tree on cgroup v2, the memory, pids and cpu controllers on v1.
func inCgroup(pid int, want string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return fmt.Errorf("read its cgroups: %w", err)
	}
	unified := cgroups.IsCgroup2UnifiedMode()
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		managed := unified && parts[0] == "0"
		if !unified {
			for _, c := range strings.Split(parts[1], ",") {
				managed = managed || c == "memory" || c == "pids" || c == "cpu"
			}
		}
		if !managed {
			continue
		}
		if parts[2] != want {
			return fmt.Errorf("it is in cgroup %s (%s), not the instance's %s", parts[2], parts[1], want)
		}
		n++
	}
	if n == 0 {
		return errors.New("it is in no cgroup of the instance")
	}
	return nil
}

// parentOf reads pid's parent from /proc/<pid>/stat.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read its status: %w", err)
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("unreadable /proc stat")
	}
	return strconv.Atoi(f[1])
}
