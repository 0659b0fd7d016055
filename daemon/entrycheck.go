package daemon

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
)

// elfMachines is the ELF machine of each GOARCH a plugin can run on.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"386":     elf.EM_386,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"riscv64": elf.EM_RISCV,
	"ppc64le": elf.EM_PPC64,
	"ppc64":   elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"loong64": elf.EM_LOONGARCH,
	"mips64":  elf.EM_MIPS,
	"mips":    elf.EM_MIPS,
}

// checkEntrypoint refuses an entrypoint that could not run here: the
// kernel must be able to execute it (an ELF executable for this machine's
// architecture, or a script starting with #!). In a sandbox (sandboxed
// true) the plugin's root file system holds only the plugin's own files,
// so an ELF program that names an interpreter (PT_INTERP: dynamically
// linked) cannot start, and a script's interpreter must be one of the
// plugin's files at the path the #! line names (dir/bin/sh for #!/bin/sh).
// Without a sandbox the host's files are there, and only the architecture
// and the format are checked. ep is relative to dir, as the manifest has
// it (the manifest package checked it stays inside dir).
func checkEntrypoint(dir, ep string, sandboxed bool) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := checkExecutable(root, ep, sandboxed, 0); err != nil {
		return fmt.Errorf("entrypoint %q %w", ep, err)
	}
	return nil
}

const fixStatic = "build it as a static executable for " + runtime.GOOS + "/" + runtime.GOARCH + " (Go: CGO_ENABLED=0 GOOS=" + runtime.GOOS + " GOARCH=" + runtime.GOARCH + " go build)"

// checkExecutable checks the file name in root; depth counts the scripts
// that led to it (the kernel follows a few; one is all a plugin needs).
// Its errors read after "entrypoint NAME".
func checkExecutable(root *os.Root, name string, sandboxed bool, depth int) error {
	f, err := root.Open(name)
	if err != nil {
		return fmt.Errorf("cannot be read: %w", err)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cannot be read: %w", err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return checkELF(f, sandboxed)
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return errors.New("starts with #! but names no interpreter")
		}
		interp := fields[0]
		if !sandboxed {
			return nil
		}
		if depth > 0 {
			return fmt.Errorf("is run by the script %s, itself a script: the sandbox runs one level of #! only; %s", interp, fixStatic)
		}
		if !path.IsAbs(interp) {
			return fmt.Errorf("is a script for %q, a relative path: a #! line needs an absolute path", interp)
		}
		inside := strings.TrimPrefix(path.Clean(interp), "/")
		if fi, err := root.Stat(inside); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("is a script for %s, which the sandbox does not have: a plugin's root file system holds only the plugin's own files, so ship %s in the plugin directory, or ship a static executable instead: %s", interp, inside, fixStatic)
		}
		if err := checkExecutable(root, inside, sandboxed, depth+1); err != nil {
			return fmt.Errorf("is a script for %s, whose %w", interp, err)
		}
		return nil
	}
	return fmt.Errorf("is neither an executable (ELF) nor a script (#!): the kernel cannot run it; %s", fixStatic)
}

// checkELF checks an ELF file's class, machine, type and interpreter.
func checkELF(r io.ReaderAt, sandboxed bool) error {
	ef, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("is a damaged ELF file (%v); %s", err, fixStatic)
	}
	defer ef.Close()
	want, known := elfMachines[runtime.GOARCH]
	if known && ef.Machine != want {
		return fmt.Errorf("is built for another architecture (%s), not this machine's %s: %s", machineName(ef), runtime.GOARCH, fixStatic)
	}
	if wantClass := elfClass(); ef.Class != wantClass {
		return fmt.Errorf("is a %s program, and this machine (%s) runs %s ones: %s", ef.Class, runtime.GOARCH, wantClass, fixStatic)
	}
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return fmt.Errorf("is an ELF file of type %s, not an executable: %s", ef.Type, fixStatic)
	}
	if !sandboxed {
		return nil
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		interp, _ := io.ReadAll(io.LimitReader(p.Open(), 256))
		return fmt.Errorf("is dynamically linked (it needs the loader %s and shared libraries, which the sandbox does not have: a plugin's root file system holds only the plugin's own files): %s",
			strings.TrimRight(string(interp), "\x00"), fixStatic)
	}
	return nil
}

func machineName(ef *elf.File) string {
	for arch, m := range elfMachines {
		if m == ef.Machine && ef.Class == classOf(arch) {
			return arch
		}
	}
	return ef.Machine.String()
}

func classOf(arch string) elf.Class {
	switch arch {
	case "386", "arm", "mips":
		return elf.ELFCLASS32
	}
	return elf.ELFCLASS64
}

func elfClass() elf.Class { return classOf(runtime.GOARCH) }
