package container

// Config configures a Runtime. Zero fields take the documented defaults.
type Config struct {
	// StateRoot is libcontainer's state directory, which also holds each
	// instance's root skeleton. It should be on a tmpfs, so that a reboot
	// clears it. Default /run/dimplugd/containers.
	StateRoot string
	// CgroupParent is the cgroup, relative to the root of every hierarchy,
	// under which each instance gets its own cgroup. Default "dimplugd".
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
