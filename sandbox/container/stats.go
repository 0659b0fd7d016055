//go:build linux && cgo

package container

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/sandbox"
)

var _ sandbox.UsageReporter = (*process)(nil)

// Usage implements sandbox.UsageReporter: it reads the instance's memory
// and CPU counters from its cgroups, wherever libcontainer made them (v1:
// the memory and cpuacct hierarchies; v2: the one directory).
func (p *process) Usage() (sandbox.Usage, error) {
	select {
	case <-p.done:
		return sandbox.Usage{}, fmt.Errorf("plugin %q (instance %s) has ended", p.plugin, p.id)
	default:
	}
	if p.c == nil {
		return sandbox.Usage{}, errors.New("no container")
	}
	st, err := p.c.State()
	if err != nil {
		return sandbox.Usage{}, fmt.Errorf("container state: %w", err)
	}
	var u sandbox.Usage
	var errs []error
	if dir := st.CgroupPaths["memory"]; dir != "" {
		u.MemoryBytes, err = readUint(filepath.Join(dir, "memory.usage_in_bytes"))
		errs = append(errs, err)
	} else if dir := st.CgroupPaths[""]; dir != "" {
		u.MemoryBytes, err = readUint(filepath.Join(dir, "memory.current"))
		errs = append(errs, err)
	}
	if dir := st.CgroupPaths["cpuacct"]; dir != "" {
		var ns uint64
		ns, err = readUint(filepath.Join(dir, "cpuacct.usage"))
		u.CPU = time.Duration(ns)
		errs = append(errs, err)
	} else if dir := st.CgroupPaths[""]; dir != "" {
		var us uint64
		us, err = readKey(filepath.Join(dir, "cpu.stat"), "usage_usec")
		u.CPU = time.Duration(us) * time.Microsecond
		errs = append(errs, err)
	}
	return u, errors.Join(errs...)
}

// readUint reads a cgroup file holding one number.
func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}

// readKey reads the number of key in a flat-keyed cgroup file ("key value"
// lines, as cpu.stat).
func readKey(path, key string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}
