package daemon

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// machine is what the host offers plugins; limits beyond it are refused at
// install. The manifest package checks the bounds that hold on every
// machine.
type machine struct {
	memory manifest.Size // physical memory
	cpus   int           // usable CPUs
	nrOpen uint64        // fs.nr_open: the highest RLIMIT_NOFILE
}

// thisMachine reads the host's figures; a figure it cannot read is zero
// and not checked.
func thisMachine() machine {
	var m machine
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.memory = manifest.Size(uint64(si.Totalram) * uint64(si.Unit))
	}
	m.cpus = runtime.NumCPU()
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		m.nrOpen, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	return m
}

// checkFitsMachine refuses an install whose effective grant asks for more
// than this machine has: the grant given with the install, or else (on a
// fresh install) what the manifest asks for. An upgrade without a new grant
// keeps a grant that was checked before.
func checkFitsMachine(mc machine, m *manifest.Manifest, grant *manifest.Permissions, prev *registry.Record) error {
	p, prefix := m.Permissions, manifest.FileName+": permissions."
	switch {
	case grant != nil:
		p, prefix = *grant, "grant: "
	case prev != nil:
		return nil
	}
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	if mc.memory > 0 && p.Memory > mc.memory {
		add("memory", "%s is more than this machine's %s of memory", p.Memory, mc.memory)
	}
	if mc.memory > 0 && p.Tmp > mc.memory {
		add("tmp", "%s is more than this machine's %s of memory (/tmp is kept in memory)", p.Tmp, mc.memory)
	}
	if mc.cpus > 0 && p.CPU > float64(mc.cpus) {
		add("cpu", "%g cores is more than this machine's %d", p.CPU, mc.cpus)
	}
	if mc.nrOpen > 0 && p.OpenFiles > mc.nrOpen {
		add("open_files", "%d is more than this machine allows (fs.nr_open is %d)", p.OpenFiles, mc.nrOpen)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("plugin %q could never start on this machine:\n  %w", m.Name, indentErr(errors.Join(errs...)))
}

// indentErr indents every line of err after the first by two spaces.
func indentErr(err error) error {
	return errors.New(strings.ReplaceAll(err.Error(), "\n", "\n  "))
}
