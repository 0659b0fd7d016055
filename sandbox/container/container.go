//go:build linux && cgo

package container

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
)

// Runtime starts plugins in libcontainer containers. It implements
// sandbox.Runtime and is safe for concurrent use.
type Runtime struct {
	cfg            Config
	swapAccounting bool // the memory controller can limit memory+swap

	// startMu is held shared by every libcontainer start and exclusively
	// by reapFailedStarts (see reap.go).
	startMu sync.RWMutex

	mu     sync.Mutex
	lock   *os.File            // holds the flock on <StateRoot>/.lock; nil once closed
	cgLock *os.File            // holds the flock on the cgroup parent's lock file
	live   map[string]*process // instances started by this Runtime and not yet destroyed; nil entries are starting
	inits  map[int]bool        // host pids of started instances' inits not yet reaped
}

// lockFileName is the file under the state root whose flock marks the
// state root as owned by a running Runtime.
const lockFileName = ".lock"

var _ sandbox.Runtime = (*Runtime)(nil)

// New checks that the container runtime can run here (see Available),
// prepares the state root and returns a Runtime.
func New(cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	if err := Available(); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(cfg.StateRoot) {
		return nil, fmt.Errorf("container runtime: state root %q must be an absolute path", cfg.StateRoot)
	}
	cfg.StateRoot = filepath.Clean(cfg.StateRoot)
	parent := strings.Trim(filepath.Clean("/"+cfg.CgroupParent), "/")
	if parent == "" || strings.Contains(parent, "..") {
		return nil, fmt.Errorf("container runtime: cgroup parent %q must name a cgroup below the root", cfg.CgroupParent)
	}
	cfg.CgroupParent = parent
	if uint64(cfg.UIDBase)+uint64(cfg.UIDCount) > 1<<32-1 {
		return nil, fmt.Errorf("container runtime: uid range %d+%d does not fit in 32 bits", cfg.UIDBase, cfg.UIDCount)
	}

	// The state root and the skeleton directory must be enterable by the
	// mapped users (the container's init reaches its root through them),
	// but not listable: 0711.
	for _, dir := range []string{cfg.StateRoot, filepath.Join(cfg.StateRoot, rootfsDirName)} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, fmt.Errorf("container runtime: create state root: %w", err)
		}
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, fmt.Errorf("container runtime: state root: %w", err)
		}
	}
	if err := checkSearchable(cfg.StateRoot); err != nil {
		return nil, fmt.Errorf("container runtime: state root %s: %w", cfg.StateRoot, err)
	}
	lock, err := lockStateRoot(cfg.StateRoot)
	if err != nil {
		return nil, err
	}
	cgLock, err := lockCgroupParent(cfg.CgroupParent, cfg.StateRoot)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &Runtime{cfg: cfg, swapAccounting: hasSwapAccounting(), lock: lock, cgLock: cgLock, live: make(map[string]*process), inits: make(map[int]bool)}, nil
}

// lockStateRoot takes an exclusive flock on the state root's lock file, so
// that two daemons never share a state root: the second one's Sweep would
// kill the first one's plugins. The kernel drops the lock when the process
// dies, however it dies.
func lockStateRoot(root string) (*os.File, error) {
	path := filepath.Join(root, lockFileName)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("container runtime: lock state root: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("container runtime: state root %s is in use by another running daemon (it holds %s); give each daemon its own state root", root, path)
		}
		return nil, fmt.Errorf("container runtime: lock state root: %w", err)
	}
	return f, nil
}

// cgroupLockDir holds one lock file per cgroup parent in use.
var cgroupLockDir = filepath.Join(DefaultRunDir, "cgroup-parents")

// lockCgroupParent takes an exclusive flock on the cgroup parent's lock file
// (named after a hash of the parent, holding the owner's state root), so
// that two Runtimes never share a cgroup parent: Sweep kills every instance
// under it that its Runtime did not start.
func lockCgroupParent(parent, stateRoot string) (*os.File, error) {
	if err := os.MkdirAll(cgroupLockDir, 0o711); err != nil {
		return nil, fmt.Errorf("container runtime: lock cgroup parent: %w", err)
	}
	sum := sha256.Sum256([]byte(parent))
	path := filepath.Join(cgroupLockDir, hex.EncodeToString(sum[:12])+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("container runtime: lock cgroup parent: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("container runtime: cgroup parent %q is in use by another running daemon (container state %s; lock %s); give each daemon its own --cgroup-parent, or leave it unset to derive one from the state directory",
				parent, strings.TrimSpace(string(owner)), path)
		}
		return nil, fmt.Errorf("container runtime: lock cgroup parent: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(stateRoot+"\n"), 0)
	}
	return f, nil
}

// Close releases the Runtime's claim on its state root and cgroup parent,
// so that another Runtime may use them. It does not stop instances; after Close, Start and
// Sweep fail. Close is idempotent.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lock == nil {
		return nil
	}
	// The parent cgroup is removed once no instance is left in it; a
	// parent still holding instances (or another daemon's) stays.
	if dirs, err := cgroupDirs("/" + r.cfg.CgroupParent); err == nil {
		for _, d := range dirs {
			_ = os.Remove(d)
		}
	}
	err := errors.Join(r.lock.Close(), r.cgLock.Close())
	r.lock, r.cgLock = nil, nil
	return err
}

var errClosed = errors.New("the container runtime was closed")

// hasSwapAccounting reports whether memory+swap can be limited: always on
// cgroup v2 (memory.swap.max), on v1 only when the kernel accounts swap.
func hasSwapAccounting() bool {
	if cgroups.IsCgroup2UnifiedMode() {
		return true
	}
	mnt, err := cgroups.FindCgroupMountpoint("", "memory")
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(mnt, "memory.memsw.limit_in_bytes"))
	return err == nil
}

// checkSearchable reports an ancestor of dir that users other than its owner
// cannot enter.
func checkSearchable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s (mode %o) is not searchable by other users, but the sandboxed plugins' mapped uids must pass through it; use chmod o+x or another state root", d, st.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}

// Available reports nil if the container runtime can run on this machine,
// and otherwise what is missing.
func Available() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root privileges (running as uid "+fmt.Sprint(os.Geteuid())+")")
	}
	if !seccomp.Enabled {
		missing = append(missing, "seccomp support (this binary was built without `-tags seccomp`)")
	}
	if err := checkCgroups(); err != nil {
		missing = append(missing, err.Error())
	}
	if data, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(data)) == "0" {
		missing = append(missing, "user namespaces (/proc/sys/user/max_user_namespaces is 0)")
	} else if _, err := os.Stat("/proc/self/ns/user"); err != nil {
		missing = append(missing, "user namespaces (kernel built without CONFIG_USER_NS)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("container runtime unavailable: missing %s", strings.Join(missing, "; "))
	}
	return nil
}

// checkCgroups reports the cgroup controllers the runtime needs that are not
// mounted (v1) or not enabled (v2).
func checkCgroups() error {
	need := []string{"memory", "pids", "cpu"}
	var absent []string
	if cgroups.IsCgroup2UnifiedMode() {
		data, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		if err != nil {
			return fmt.Errorf("cgroup v2 controllers: %w", err)
		}
		have := strings.Fields(string(data))
		for _, c := range need {
			if !contains(have, c) {
				absent = append(absent, c)
			}
		}
	} else {
		for _, c := range need {
			if _, err := cgroups.FindCgroupMountpoint("", c); err != nil {
				absent = append(absent, c)
			}
		}
		if _, err := cgroups.FindCgroupMountpoint("", "devices"); err != nil {
			absent = append(absent, "devices")
		}
	}
	if len(absent) > 0 {
		return fmt.Errorf("cgroup controller(s) %s", strings.Join(absent, ", "))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return "container" }

// Sandboxed implements sandbox.Runtime: instances are isolated.
func (r *Runtime) Sandboxed() bool { return true }

// reserve claims id for an instance being started. It fails when this
// Runtime already has a live instance with that id.
func (r *Runtime) reserve(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lock == nil {
		return errClosed
	}
	if _, ok := r.live[id]; ok {
		return errExists
	}
	r.live[id] = nil
	return nil
}

func (r *Runtime) register(id string, p *process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.live[id] = p
}

func (r *Runtime) release(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.live, id)
}

func (r *Runtime) closed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lock == nil
}

func (r *Runtime) isLive(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.live[id]
	return ok
}
