//go:build linux && cgo

package container

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Reaping the sandbox set-up processes.
//
// libcontainer starts an instance by re-executing the daemon as "runc init"
// (stage 0, runc:[0:PARENT]), which clones stage 1 (runc:[1:CHILD]) and
// stage 2 (runc:[2:INIT], the instance's init) with CLONE_PARENT: all three
// are children of the daemon. libcontainer waits for stage 0, for stage 1
// once stage 0 has sent the pids, and for stage 2 once it is the instance's
// init; but when a stage dies before the pids were sent (killed, OOM) Start
// fails without waiting for stages 1 and 2, which stay zombies (or, briefly,
// dying processes) under the daemon for as long as it runs.
//
// So a failed start reaps them by pid. It cannot tell its own stages from
// another start's, so it waits until no start is in flight (startMu: starts
// hold it shared, the reaper exclusively); then every child of the daemon
// named runc:[...] that is not the init of an instance this Runtime started
// (inits, which the instance's wait goroutine reaps) is debris of a failed
// start: it is killed and waited for by its own pid. Nothing else is waited
// for, so the exits os/exec and libcontainer wait for are never taken from
// them.

// setupCommPrefix starts the name nsexec gives every stage of runc init.
const setupCommPrefix = "runc:["

// addInit records pid as the init of a started instance; its wait goroutine
// reaps it. Called with startMu held (shared).
func (r *Runtime) addInit(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inits[pid] = true
}

// dropInit forgets an init once it was reaped (its pid may then be reused).
func (r *Runtime) dropInit(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inits, pid)
}

// reapFailedStarts kills and reaps every set-up process of a failed start.
// It returns the number of processes reaped.
func (r *Runtime) reapFailedStarts() int {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	r.mu.Lock()
	keep := make(map[int]bool, len(r.inits))
	for pid := range r.inits {
		keep[pid] = true
	}
	r.mu.Unlock()
	n := 0
	for _, pid := range setupChildren() {
		if keep[pid] {
			continue
		}
		// The pid is our unreaped child, so it cannot have been reused.
		_ = unix.Kill(pid, unix.SIGKILL)
		for {
			_, err := unix.Wait4(pid, nil, 0, nil)
			if !errors.Is(err, unix.EINTR) {
				if err == nil {
					n++
				}
				break
			}
		}
	}
	return n
}

// setupChildren returns the pids of this process's children named
// runc:[...], living or zombie.
func setupChildren() []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	me := strconv.Itoa(os.Getpid())
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || !strings.HasPrefix(s[open+1:end], setupCommPrefix) {
			continue
		}
		// Fields after the name: state, ppid, ...
		f := strings.Fields(s[end+1:])
		if len(f) > 1 && f[1] == me {
			pids = append(pids, pid)
		}
	}
	return pids
}
