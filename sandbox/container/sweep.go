//go:build linux && cgo

package container

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"
)

// sweepTimeout bounds the time spent on one left-behind instance.
const sweepTimeout = 10 * time.Second

// instanceName matches names that can be instance ids (sandbox.Spec.ID);
// Sweep leaves anything else in the state root and cgroup parent alone.
var instanceName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// Sweep implements sandbox.Runtime. It destroys every instance found in the
// state root or under the cgroup parent that this Runtime did not start: when
// the daemon dies without stopping its plugins (kill -9, crash), their
// containers keep running, re-parented to the host's init. For each one Sweep
// kills the container, waits until it is gone, and removes its cgroups, state
// directory and root skeleton. It also removes skeletons and cgroups whose
// container state is missing (a daemon that died while starting one).
// Failures are collected; Sweep carries on with the next instance.
func (r *Runtime) Sweep(ctx context.Context) error {
	if r.closed() {
		return fmt.Errorf("sweep left-behind sandboxes: %w", errClosed)
	}
	ids := make(map[string]bool)
	entries, err := os.ReadDir(r.cfg.StateRoot)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sweep left-behind sandboxes: read state root: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && instanceName.MatchString(e.Name()) {
			ids[e.Name()] = true
		}
	}
	skeletons, err := os.ReadDir(filepath.Join(r.cfg.StateRoot, rootfsDirName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sweep left-behind sandboxes: read %s: %w", rootfsDirName, err)
	}
	for _, e := range skeletons {
		if instanceName.MatchString(e.Name()) {
			ids[e.Name()] = true
		}
	}
	mps, err := cgroupMountpoints()
	if err != nil {
		return fmt.Errorf("sweep left-behind sandboxes: %w", err)
	}
	for _, mp := range mps {
		entries, _ := os.ReadDir(filepath.Join(mp, r.cfg.CgroupParent))
		for _, e := range entries {
			if e.IsDir() && instanceName.MatchString(e.Name()) {
				ids[e.Name()] = true
			}
		}
	}

	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	var errs []error
	for _, id := range sorted {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if r.isLive(id) {
			continue
		}
		if err := r.sweepOne(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", id, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("sweep left-behind sandboxes in %s: %w", r.cfg.StateRoot, errors.Join(errs...))
	}
	return nil
}

// sweepOne kills and removes one instance this Runtime did not start.
func (r *Runtime) sweepOne(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()

	var errs []error
	c, err := libcontainer.Load(r.cfg.StateRoot, id)
	switch {
	case err == nil:
		if err := killContainer(ctx, c); err != nil {
			errs = append(errs, err)
			c = nil // cannot destroy a running container; removeCgroup kills what is left
		}
	case errors.Is(err, libcontainer.ErrNotExist):
		// No state: the skeleton or cgroups of an instance that never
		// got going, cleaned up below.
	default:
		// Unreadable state: fall back to the cgroups, which still
		// name every process the instance has.
		errs = append(errs, fmt.Errorf("load container state: %w", err))
	}
	if err := r.cleanup(ctx, c, id, r.rootfsDir(id)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killContainer sends SIGKILL to a container's init (which ends its whole
// pid namespace) and polls until libcontainer reports it stopped.
func killContainer(ctx context.Context, c *libcontainer.Container) error {
	for first := true; ; first = false {
		status, err := c.Status()
		if err != nil {
			return fmt.Errorf("container status: %w", err)
		}
		if status == libcontainer.Stopped {
			return nil
		}
		if first {
			if err := c.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
				return fmt.Errorf("kill container: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for killed container: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// removeStateDir removes libcontainer's state directory for id, if any.
func removeStateDir(root, id string) error {
	if !instanceName.MatchString(id) {
		return fmt.Errorf("remove state: %q is not an instance id", id)
	}
	if err := os.RemoveAll(filepath.Join(root, id)); err != nil {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}
