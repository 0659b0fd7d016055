//go:build linux && cgo

package container

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
)

// Each instance's root filesystem is a skeleton directory under
// <StateRoot>/.rootfs/<id>, built on the host before the container starts
// and never written to afterwards. It holds only empty mount points:
//
//	/proc, /dev, /tmp        proc, a minimal tmpfs /dev, the size-limited /tmp
//	/<entry> for each top-level entry of Spec.Root
//	                         a read-only bind of that entry (symlinks are copied)
//	targets of Spec.Mounts   read-only binds of the granted host paths
//
// so the plugin sees its installed files as the root of its filesystem, with
// nothing of the host besides what it was granted. Inside the container the
// root is remounted read-only. The skeleton holds no host mounts (all mounts
// live in the container's mount namespace), so removing it can never touch
// the plugin's files.

// rootfsDirName is the directory under the state root holding the skeletons.
// Its leading dot keeps it apart from libcontainer's per-container state
// directories, whose names are instance ids.
const rootfsDirName = ".rootfs"

// reservedTopLevel are the root directories the sandbox provides itself.
var reservedTopLevel = map[string]bool{"proc": true, "dev": true, "tmp": true, "sys": true}

// maxTopLevelEntries bounds the bind mounts made for Spec.Root.
const maxTopLevelEntries = 128

const (
	pluginBindFlags  = unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV
	grantedBindFlags = pluginBindFlags | unix.MS_NOEXEC
)

var errExists = errors.New("already exists")

// rootfsDir is where the skeleton of instance id lives.
func (r *Runtime) rootfsDir(id string) string {
	return filepath.Join(r.cfg.StateRoot, rootfsDirName, id)
}

// buildRootfs creates the skeleton for spec and returns its directory and the
// bind mounts that fill it. On error nothing is left behind.
func (r *Runtime) buildRootfs(spec *sandbox.Spec) (dir string, binds []*configs.Mount, err error) {
	if !filepath.IsAbs(spec.Root) {
		return "", nil, fmt.Errorf("plugin root %q is not an absolute path", spec.Root)
	}
	entries, err := os.ReadDir(spec.Root)
	if err != nil {
		return "", nil, fmt.Errorf("read plugin root: %w", err)
	}
	if len(entries) > maxTopLevelEntries {
		return "", nil, fmt.Errorf("plugin root %s has %d top-level entries, more than the %d the sandbox binds one by one; put files in subdirectories", spec.Root, len(entries), maxTopLevelEntries)
	}

	skel := r.rootfsDir(spec.ID)
	if err := os.Mkdir(skel, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", nil, fmt.Errorf("rootfs %s: %w", skel, errExists)
		}
		return "", nil, fmt.Errorf("create rootfs: %w", err)
	}
	defer func() {
		if err != nil {
			_ = removeRootfs(skel)
		}
	}()
	dir = skel
	// Mkdir obeys the daemon's umask, but the mapped users must be able to
	// enter every directory of the skeleton.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("create rootfs: %w", err)
	}
	for _, name := range []string{"proc", "dev", "tmp"} {
		if err := mkdirMode(filepath.Join(dir, name)); err != nil {
			return "", nil, fmt.Errorf("create rootfs: %w", err)
		}
	}

	plugin := make(map[string]fs.FileMode, len(entries)) // top-level entries by type
	for _, e := range entries {
		name := e.Name()
		if reservedTopLevel[name] {
			return "", nil, fmt.Errorf("plugin root %s has a top-level %q, a name the sandbox reserves for its own /%s", spec.Root, name, name)
		}
		src := filepath.Join(spec.Root, name)
		dst := filepath.Join(dir, name)
		switch t := e.Type(); {
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(src)
			if err != nil {
				return "", nil, fmt.Errorf("read plugin root: %w", err)
			}
			if err := os.Symlink(target, dst); err != nil {
				return "", nil, fmt.Errorf("create rootfs: %w", err)
			}
			plugin[name] = t
			continue
		case t.IsDir():
			err = mkdirMode(dst)
		case t.IsRegular():
			err = createEmptyFile(dst)
		default:
			continue // sockets, fifos and devices are not part of a plugin
		}
		if err != nil {
			return "", nil, fmt.Errorf("create rootfs: %w", err)
		}
		plugin[name] = e.Type()
		binds = append(binds, &configs.Mount{
			Source:      src,
			Destination: "/" + name,
			Device:      "bind",
			Flags:       pluginBindFlags,
		})
	}

	for i, m := range spec.Mounts {
		target := filepath.Clean(m.Target)
		first, _, _ := strings.Cut(strings.TrimPrefix(target, "/"), "/")
		if target == "/" || reservedTopLevel[first] {
			return "", nil, fmt.Errorf("mounts[%d]: target %q is not allowed: / and /proc, /dev, /tmp, /sys belong to the sandbox", i, m.Target)
		}
		// A mount point inside another grant would have to be created in
		// the granted host directory.
		for j, o := range spec.Mounts[:i] {
			other := filepath.Clean(o.Target)
			if target == other || strings.HasPrefix(target, other+"/") || strings.HasPrefix(other, target+"/") {
				return "", nil, fmt.Errorf("mounts[%d]: target %q overlaps mounts[%d] target %q; grant paths side by side", i, m.Target, j, o.Target)
			}
		}
		st, err := os.Stat(m.Source)
		if err != nil {
			return "", nil, fmt.Errorf("mounts[%d]: granted path: %w", i, err)
		}
		if kind, ok := plugin[first]; ok {
			// The mount point must already exist among the plugin's
			// files: the bind of Spec.Root is read-only.
			lt, err := os.Lstat(filepath.Join(spec.Root, target))
			if kind&fs.ModeSymlink != 0 || err != nil || lt.IsDir() != st.IsDir() || lt.Mode()&fs.ModeSymlink != 0 {
				return "", nil, fmt.Errorf("mounts[%d]: target %q lies inside the plugin's own read-only files, where no matching mount point exists", i, m.Target)
			}
		} else if err := makeMountPoint(dir, target, st.IsDir()); err != nil {
			return "", nil, fmt.Errorf("create rootfs: %w", err)
		}
		binds = append(binds, &configs.Mount{
			Source:      m.Source,
			Destination: target,
			Device:      "bind",
			Flags:       grantedBindFlags,
		})
	}
	return dir, binds, nil
}

// mkdirMode makes directory path with mode 0755 whatever the umask.
func mkdirMode(path string) error {
	if err := os.Mkdir(path, 0o755); err != nil {
		return err
	}
	return os.Chmod(path, 0o755)
}

// makeMountPoint creates target (an absolute path in the sandbox) under the
// skeleton dir, as a directory or an empty file, with any missing parents.
// Existing components are fine: two grants may share a parent.
func makeMountPoint(dir, target string, isDir bool) error {
	parts := strings.Split(strings.TrimPrefix(target, "/"), "/")
	p := dir
	for i, part := range parts {
		p = filepath.Join(p, part)
		var err error
		if i < len(parts)-1 || isDir {
			err = mkdirMode(p)
		} else {
			err = createEmptyFile(p)
		}
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// createEmptyFile creates an empty file at path, mode 0644, for a bind mount
// to cover.
func createEmptyFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// removeRootfs deletes a skeleton. It refuses when anything is mounted below
// it on the host or when it meets a file with content: a skeleton holds only
// empty mount points, so either would mean it is not looking at one.
func removeRootfs(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("remove rootfs %s: %w", dir, err)
	}
	if len(mounts) > 0 {
		return fmt.Errorf("remove rootfs %s: refusing, %s is mounted there on the host", dir, mounts[0].Mountpoint)
	}
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Size() != 0 {
				return fmt.Errorf("refusing, %s is not an empty mount point", p)
			}
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove rootfs %s: %w", dir, err)
	}
	for i := len(paths) - 1; i >= 0; i-- {
		if err := os.Remove(paths[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove rootfs: %w", err)
		}
	}
	return nil
}
