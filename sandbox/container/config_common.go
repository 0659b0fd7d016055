package container

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
)

// Config configures a Runtime. Zero fields take the documented defaults.
type Config struct {
	// StateRoot is libcontainer's state directory, which also holds each
	// instance's root skeleton. It should be on a tmpfs, so that a reboot
	// clears it. Default /run/dimplugd/containers; a daemon uses the one
	// DefaultsFor derives from its state directory.
	StateRoot string
	// CgroupParent is the cgroup, relative to the root of every hierarchy,
	// under which each instance gets its own cgroup. Default "dimplugd"; a
	// daemon uses the one DefaultsFor derives from its state directory.
	// One Runtime at a time may use a cgroup parent (New locks it): Sweep
	// removes every instance under it that the Runtime did not start.
	CgroupParent string
	// UIDBase and UIDCount are the host uid and gid range the instances'
	// user namespaces map to (container id 0 is host id UIDBase). Default
	// 100000 and 65536.
	UIDBase, UIDCount uint32
}

// Defaults for Config.
const (
	DefaultStateRoot    = "/run/dimplugd/containers"
	DefaultCgroupParent = "dimplugd"
	DefaultUIDBase      = 100000
	DefaultUIDCount     = 65536
)

func (c Config) withDefaults() Config {
	if c.StateRoot == "" {
		c.StateRoot = DefaultStateRoot
	}
	if c.CgroupParent == "" {
		c.CgroupParent = DefaultCgroupParent
	}
	if c.UIDBase == 0 {
		c.UIDBase = DefaultUIDBase
	}
	if c.UIDCount == 0 {
		c.UIDCount = DefaultUIDCount
	}
	return c
}

// DefaultRunDir is the directory under which DefaultsFor places each
// daemon's container state root, and which holds the cgroup parents' locks.
const DefaultRunDir = "/run/dimplugd"

// DefaultsFor returns the container state root and cgroup parent of the
// daemon whose state directory is stateDir, when they are not set by hand:
// /run/dimplugd/<id> and "dimplugd-<id>", where id is a short hash of the
// absolute state directory. Daemons with different state directories thus
// never share them (and never sweep each other's sandboxes), and a daemon
// finds its own again after a restart.
func DefaultsFor(stateDir string) (stateRoot, cgroupParent string, err error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return "", "", fmt.Errorf("state directory: %w", err)
	}
	sum := sha256.Sum256([]byte(filepath.Clean(abs)))
	id := hex.EncodeToString(sum[:6])
	return filepath.Join(DefaultRunDir, id), "dimplugd-" + id, nil
}
