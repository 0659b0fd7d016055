// Package container owns the sandboxed runtime that starts each plugin in its
// own libcontainer container: user, mount, pid, ipc, uts, network and cgroup
// namespaces; a per-instance read-only root built from the plugin's installed
// files; no capabilities, no new privileges and an allowlist seccomp filter;
// cgroup limits on memory, tasks and CPU; and no network beyond loopback. It
// also owns the clean-up of instances an earlier daemon left running.
//
// The runtime re-executes the current binary as each container's init, so
// every binary that uses it must call Init first thing in main (and in
// TestMain). It needs root, cgroup v1 or v2 with the memory, pids and cpu
// controllers, user namespaces, and a build with cgo and `-tags seccomp`;
// Available says what is missing. The implementation in this package must
// not import the daemon, the SDK or cobra.
//
// Inside the sandbox the plugin runs as uid and gid 0 of its user namespace,
// mapped to Config.UIDBase on the host, with every capability dropped; all
// instances share that unprivileged host range.
package container
