//go:build linux && cgo

package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/cgroups"
)

// Cgroup delegation (systemd's Delegate=yes): the service manager gives the
// daemon its own cgroup subtree, and the plugins' cgroups belong inside it,
// not under the root where DefaultsFor puts them. With --cgroup-parent=auto
// the daemon finds its own cgroup in /proc/self/cgroup and DelegatedParent
// returns the parent for its plugins:
//
//   - cgroup v2: <own>/plugins. The daemon first moves itself into the leaf
//     <own>/daemon, because a cgroup with processes in it cannot enable
//     controllers for its children (the "no internal processes" rule), and
//     then enables the cpu, memory and pids controllers in <own>.
//   - cgroup v1: <own>/plugins, where <own> is the daemon's cgroup in the
//     memory, pids and cpu hierarchies, which must be the same path (systemd
//     puts a delegated service at the same path in every hierarchy it
//     manages). v1 has no rule against internal processes: the daemon
//     stays where it is, and its plugins are accounted within its cgroup.
//     Hierarchies where the daemon sits elsewhere (freezer, cpuset) get the
//     same path under their root, as every instance cgroup does.

// AutoCgroupParent is the Config.CgroupParent (--cgroup-parent) that a
// daemon resolves with DelegatedParent before calling New.
const AutoCgroupParent = "auto"

// delegatedEnv records, across the daemon's upgrade-in-place execve (the
// process, and so its cgroup, stays), the delegated cgroup a daemon moved
// out of into its "daemon" leaf, so that the new image does not nest again.
const delegatedEnv = "DIMPLUGD_CGROUP_DELEGATED"

// Leaf names under the delegated cgroup.
const (
	delegatedDaemonLeaf = "daemon"
	delegatedPlugins    = "plugins"
)

// delegatedControllers are the controllers plugin sandboxes need.
var delegatedControllers = []string{"cpu", "memory", "pids"}

// DelegatedParent returns the cgroup parent (relative to the root of every
// hierarchy, as Config.CgroupParent) for plugins under the daemon's own,
// delegated cgroup, moving the daemon into a leaf on cgroup v2 (see
// above). It fails when the daemon runs in the root cgroup, which nobody
// delegated to it.
func DelegatedParent() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("--cgroup-parent=auto: %w", err)
	}
	unified := cgroups.IsCgroup2UnifiedMode()
	root, err := delegatedRoot(string(data), unified, os.Getenv(delegatedEnv))
	if err != nil {
		return "", fmt.Errorf("--cgroup-parent=auto: %w", err)
	}
	if unified {
		if err := enterLeaf("/sys/fs/cgroup", root); err != nil {
			return "", fmt.Errorf("--cgroup-parent=auto: %w", err)
		}
		os.Setenv(delegatedEnv, root)
	}
	return strings.TrimPrefix(filepath.Join(root, delegatedPlugins), "/"), nil
}

// delegatedRoot finds the daemon's own cgroup in the text of
// /proc/self/cgroup. On v2, marker is the cgroup this process already left
// for its daemon leaf (delegatedEnv), if any.
func delegatedRoot(procSelfCgroup string, unified bool, marker string) (string, error) {
	paths := map[string]string{} // by v1 controller; "" for v2
	for _, line := range strings.Split(strings.TrimSpace(procSelfCgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			paths[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			paths[c] = parts[2]
		}
	}
	var own string
	if unified {
		p, ok := paths[""]
		if !ok {
			return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
		}
		own = filepath.Clean(p)
		if marker != "" && own == filepath.Join(marker, delegatedDaemonLeaf) {
			own = marker // moved there before an upgrade in place
		}
	} else {
		var got []string
		for _, c := range delegatedControllers {
			p, ok := paths[c]
			if !ok {
				return "", fmt.Errorf("the daemon is in no cgroup of the %s hierarchy", c)
			}
			p = filepath.Clean(p)
			if own == "" {
				own = p
			}
			got = append(got, c+" "+p)
			if p != own {
				return "", fmt.Errorf("the daemon's cgroups differ between hierarchies (%s); a delegated service has the same path in each: pass --cgroup-parent by hand", strings.Join(got, ", "))
			}
		}
	}
	if own == "/" || own == "." || !filepath.IsAbs(own) || strings.Contains(own, "..") {
		return "", fmt.Errorf("the daemon runs in the root cgroup (%q), which is not delegated to it: run it as a systemd service with Delegate=yes, or pass --cgroup-parent by hand", own)
	}
	return own, nil
}

// enterLeaf moves this process into <root>/daemon under the v2 mount mnt
// and enables the controllers plugins need for root's children.
func enterLeaf(mnt, root string) error {
	leaf := filepath.Join(mnt, root, delegatedDaemonLeaf)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create the daemon's leaf cgroup: %w", err)
	}
	// Writing a pid to cgroup.procs moves its whole process, every thread.
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		return fmt.Errorf("move the daemon into %s: %w (is the cgroup delegated? Delegate=yes)", leaf, err)
	}
	ctl := filepath.Join(mnt, root, "cgroup.subtree_control")
	if err := os.WriteFile(ctl, []byte("+"+strings.Join(delegatedControllers, " +")), 0); err != nil {
		return fmt.Errorf("enable the %s controllers in %s: %w (is the cgroup delegated? Delegate=yes; does %s hold other processes?)",
			strings.Join(delegatedControllers, ", "), ctl, err, filepath.Join(mnt, root))
	}
	return nil
}
