// Package container owns the sandboxed runtime that starts each plugin in its
// own libcontainer container: user, mount, pid, ipc, uts, network and cgroup
// namespaces; a per-instance read-only root built from the plugin's installed
// files; no capabilities, no new privileges and an allowlist seccomp filter;
// cgroup limits on memory, tasks and CPU; and no network beyond loopback. It
// also owns the clean-up of instances an earlier daemon left running (Sweep).
// It must not import the daemon, the SDK or cobra.
//
// The runtime re-executes the current binary as each container's init, so
// every binary that uses it must call Init first thing in main (and in
// TestMain). Each start runs the binary's package initialisers again, so
// heavy package-level init in the daemon slows every plugin start. The
// runtime needs root, cgroup v1 or v2 with the memory, pids and cpu
// controllers, user namespaces, and a build with cgo and `-tags seccomp`;
// Available says what is missing.
//
// What a plugin sees:
//   - its installed files (sandbox.Spec.Root) as the read-only root of its
//     filesystem, its working directory; /proc; a /dev with null, zero,
//     full, random and urandom; a writable /tmp of Limits.TmpBytes; and the
//     granted host paths (Spec.Mounts), read-only and noexec. Nothing else
//     of the host.
//   - uid and gid 0 of its own user namespace, mapped to Config.UIDBase on
//     the host (all instances share that unprivileged range), with every
//     capability dropped and no_new_privs set.
//   - the control socket at fd 3, stdout and stderr; HOME=/tmp unless the
//     spec's environment sets it.
//   - pid 1 of its own pid namespace: signals it installs no handler for are
//     ignored (a Go plugin exits with code 2 on SIGTERM); SIGKILL ends it and
//     every process it started.
//
// On the host, each Runtime keeps its state under Config.StateRoot (which it
// locks, so two daemons never share one): libcontainer's per-instance state
// directories and, under .rootfs/, each instance's root skeleton. Each
// instance's cgroup is /<CgroupParent>/<id> in every hierarchy.
//
// Start takes 10-20 ms here, most of it libcontainer's init and the kernel's
// cgroup migration. Prepare does that work ahead of need; Prepared.Start
// then readies the plugin in about the time a plain exec takes.
package container
