// Package escapetest holds the escape and abuse attempts a sandbox must stop,
// shared by the sandbox's probe (sandbox/container/testdata/probe) and the
// daemon's hostile-plugin suite (daemon/testdata/hostile), so that each
// attempt is written once.
//
// An Attempt runs inside the sandboxed process and reports honestly what the
// kernel answered: Result.Blocked is true only when the call failed the way a
// working sandbox makes it fail (a seccomp EPERM, a missing host path, a
// read-only mount, a cgroup limit), and Result.Errno names the errno the
// decisive call returned. Arguments are chosen so that a permitted call
// fails differently (EFAULT, EBADF, EINVAL, ESRCH) or succeeds harmlessly.
//
// The attempts are meant to run only inside a sandbox. Even so they stay
// harmless where they can: they probe processes with signal 0, open
// sensitive files for writing without writing to them, and remove what they
// create. The bombs (fork-bomb, memory-bomb, cpu-spin, fd-exhaustion,
// fill-tmp) are real abuse, and the memory bomb ends only when the process
// is killed.
//
// This package must not import the daemon, the SDK or cobra.
package escapetest
