//go:build linux && cgo

package container

import (
	"fmt"
	"strconv"

	"github.com/opencontainers/cgroups"
	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
)

// cpuPeriod is the CFS period the CPU quota is expressed against (100 ms).
const cpuPeriod = 100000

// maskedPaths hide host information that /proc shows even inside the
// namespaces (kernel memory, keys, timers, hardware details).
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
	"/proc/timer_stats", "/sys/firmware",
}

// readonlyPaths are remounted read-only after setup; /dev is among them, so
// the plugin cannot create files there.
var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/dev",
}

// sandboxDevices are the only device nodes in /dev.
var sandboxDevices = []*devices.Device{
	charDevice("/dev/null", 1, 3),
	charDevice("/dev/zero", 1, 5),
	charDevice("/dev/full", 1, 7),
	charDevice("/dev/random", 1, 8),
	charDevice("/dev/urandom", 1, 9),
}

func charDevice(path string, major, minor int64) *devices.Device {
	return &devices.Device{
		Rule: devices.Rule{
			Type: devices.CharDevice, Major: major, Minor: minor,
			Permissions: "rwm", Allow: true,
		},
		Path:     path,
		FileMode: 0o666,
	}
}

// containerConfig is the libcontainer configuration of one instance, whose
// skeleton root is rootfs and whose plugin files and grants are binds.
func (r *Runtime) containerConfig(spec *sandbox.Spec, lim sandbox.Limits, rootfs string, binds []*configs.Mount) *configs.Config {
	const (
		procFlags = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV
		tmpFlags  = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV
		devFlags  = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_STRICTATIME
	)
	inodes := max(lim.TmpBytes/4096, 1024)
	mounts := []*configs.Mount{
		{Source: "proc", Destination: "/proc", Device: "proc", Flags: procFlags},
		{Source: "tmpfs", Destination: "/dev", Device: "tmpfs", Flags: devFlags, Data: "mode=755,size=64k,nr_inodes=64"},
		{
			Source: "tmpfs", Destination: "/tmp", Device: "tmpfs", Flags: tmpFlags,
			Data: "mode=1777,size=" + strconv.FormatInt(lim.TmpBytes, 10) + ",nr_inodes=" + strconv.FormatInt(inodes, 10),
		},
	}
	mounts = append(mounts, binds...)

	rules := make([]*devices.Rule, 0, len(sandboxDevices)+1)
	rules = append(rules, &devices.Rule{Type: devices.WildcardDevice, Major: devices.Wildcard, Minor: devices.Wildcard, Permissions: "rwm", Allow: false})
	for _, d := range sandboxDevices {
		rules = append(rules, &d.Rule)
	}
	pids := lim.Pids

	idmap := []configs.IDMap{{ContainerID: 0, HostID: int64(r.cfg.UIDBase), Size: int64(r.cfg.UIDCount)}}
	return &configs.Config{
		Rootfs:     rootfs,
		Readonlyfs: true,
		// Mount events propagate neither into nor out of the container.
		RootPropagation: unix.MS_PRIVATE | unix.MS_REC,
		Mounts:          mounts,
		Devices:         sandboxDevices,
		Hostname:        "plugin",
		Namespaces: configs.Namespaces{
			{Type: configs.NEWNS},
			{Type: configs.NEWUTS},
			{Type: configs.NEWIPC},
			{Type: configs.NEWPID},
			{Type: configs.NEWNET},
			{Type: configs.NEWCGROUP},
			{Type: configs.NEWUSER},
		},
		UIDMappings: idmap,
		GIDMappings: idmap,
		// An empty set drops every capability; nil would keep root's.
		Capabilities:    &configs.Capabilities{},
		NoNewPrivileges: true,
		Seccomp:         seccompPolicy(),
		Networks:        []*configs.Network{{Type: "loopback", Address: "127.0.0.1/0", Gateway: "localhost"}},
		Rlimits: []configs.Rlimit{
			{Type: unix.RLIMIT_NOFILE, Hard: lim.OpenFiles, Soft: lim.OpenFiles},
			{Type: unix.RLIMIT_CORE, Hard: 0, Soft: 0},
		},
		MaskPaths:     maskedPaths,
		ReadonlyPaths: readonlyPaths,
		Cgroups: &cgroups.Cgroup{
			Path: r.cgroupPath(spec.ID),
			Resources: &cgroups.Resources{
				Memory:     lim.MemoryBytes,
				MemorySwap: r.memorySwap(lim.MemoryBytes),
				PidsLimit:  &pids,
				CpuQuota:   int64(lim.CPU * cpuPeriod),
				CpuPeriod:  cpuPeriod,
				Devices:    rules,
			},
		},
		Labels: []string{"dimplugd.plugin=" + spec.Plugin},
	}
}

// validateLimits rejects limits the kernel or the Go runtime cannot work with.
func validateLimits(l sandbox.Limits) error {
	switch {
	case l.MemoryBytes < 8<<20:
		return fmt.Errorf("memory limit %d bytes is below the 8 MiB a plugin needs to start", l.MemoryBytes)
	case l.Pids < 8:
		return fmt.Errorf("pids limit %d is below the 8 tasks a Go plugin needs to start", l.Pids)
	case l.CPU*cpuPeriod < 1000:
		return fmt.Errorf("cpu quota %.3f cores is below the 0.01 the kernel accepts", l.CPU)
	case l.TmpBytes < 4096:
		return fmt.Errorf("/tmp size %d bytes is below one page", l.TmpBytes)
	case l.OpenFiles < 16:
		return fmt.Errorf("open files limit %d is below 16", l.OpenFiles)
	}
	return nil
}

// memorySwap is the memory+swap limit for a memory limit of mem: the same
// value, so the plugin gets no swap. Without swap accounting (cgroup v1 on a
// kernel booted without it) there is no such limit to set, and 0 leaves it
// alone.
func (r *Runtime) memorySwap(mem int64) int64 {
	if !r.swapAccounting {
		return 0
	}
	return mem
}
