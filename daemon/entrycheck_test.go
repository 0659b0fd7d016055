//go:build linux

package daemon

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestCheckEntrypoint: the install check of an entrypoint, sandboxed and
// not: a static executable passes; a dynamically linked one is refused in
// the sandbox with the fix; another architecture and a file that is
// neither ELF nor a script are refused everywhere; a script passes only
// when its interpreter is one of the plugin's own files.
func TestCheckEntrypoint(t *testing.T) {
	static := buildBin(t, "./daemon/testdata/testplug", true)
	dynamic := "/bin/true"
	if ef, err := elf.Open(dynamic); err != nil || !hasInterp(ef) {
		t.Skipf("%s is not a dynamically linked ELF program here", dynamic)
	}
	// The static binary, claiming another machine.
	foreign, err := os.ReadFile(static)
	if err != nil {
		t.Fatal(err)
	}
	other := elf.EM_AARCH64
	if runtime.GOARCH == "arm64" {
		other = elf.EM_X86_64
	}
	binary.LittleEndian.PutUint16(foreign[18:], uint16(other))

	type file struct {
		name, copyFrom, content string
	}
	tests := []struct {
		name      string
		files     []file
		sandboxed bool
		want      []string // nil: accepted
	}{
		{"static", []file{{"p", static, ""}}, true, nil},
		{"static unsandboxed", []file{{"p", static, ""}}, false, nil},
		{"dynamic", []file{{"p", dynamic, ""}}, true,
			[]string{`entrypoint "p" is dynamically linked (it needs the loader /lib`, "CGO_ENABLED=0", "go build"}},
		{"dynamic unsandboxed", []file{{"p", dynamic, ""}}, false, nil},
		{"wrong machine", []file{{"p", "", string(foreign)}}, true,
			[]string{`entrypoint "p" is built for another architecture`, "not this machine's " + runtime.GOARCH, "GOARCH=" + runtime.GOARCH}},
		{"wrong machine unsandboxed", []file{{"p", "", string(foreign)}}, false,
			[]string{"is built for another architecture"}},
		{"not ELF", []file{{"p", "", "hello, I am text\n"}}, true,
			[]string{`entrypoint "p" is neither an executable (ELF) nor a script (#!)`, "CGO_ENABLED=0"}},
		{"not ELF unsandboxed", []file{{"p", "", "MZ\x90\x00"}}, false,
			[]string{"neither an executable (ELF) nor a script"}},
		{"empty", []file{{"p", "", ""}}, true, []string{"neither an executable"}},
		{"shebang, host interpreter", []file{{"p", "", "#!/bin/sh\necho hi\n"}}, true,
			[]string{`entrypoint "p" is a script for /bin/sh, which the sandbox does not have`, "ship bin/sh in the plugin directory", "CGO_ENABLED=0"}},
		{"shebang unsandboxed", []file{{"p", "", "#!/bin/sh\necho hi\n"}}, false, nil},
		{"shebang, shipped interpreter", []file{{"p", "", "#! /bin/tool -x\n"}, {"bin/tool", static, ""}}, true, nil},
		{"shebang, shipped dynamic interpreter", []file{{"p", "", "#!/bin/tool\n"}, {"bin/tool", dynamic, ""}}, true,
			[]string{"is a script for /bin/tool, whose is dynamically linked"}},
		{"shebang, relative", []file{{"p", "", "#!tool\n"}, {"tool", static, ""}}, true,
			[]string{"a relative path"}},
		{"shebang, nothing", []file{{"p", "", "#!  \n"}}, true, []string{"names no interpreter"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				p := filepath.Join(dir, f.name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if f.copyFrom != "" {
					copyFile(t, f.copyFrom, p, 0o755)
				} else if err := os.WriteFile(p, []byte(f.content), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			err := checkEntrypoint(dir, "p", tt.sandboxed)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
}

func hasInterp(ef *elf.File) bool {
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// TestInstallRefusesDynamic: through the control API, a dynamically
// linked entrypoint (a dimplugd built with cgo) is refused at install
// when plugins run in the sandbox, saying how to fix it; nothing is left
// installed.
func TestInstallRefusesDynamic(t *testing.T) {
	rt := testRuntime(t)
	if !rt.Sandboxed() {
		t.Skip("the plain process runtime runs dynamically linked plugins")
	}
	td := startDaemon(t, rt, fastSupervision)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte(testplugManifest("dynamic", nil, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "/bin/true", filepath.Join(dir, "testplug"), 0o755)
	archive, err := host.Archive(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = td.ctl.Install(ctx, archive, host.InstallOptions{Enable: true})
	if err == nil || !strings.Contains(err.Error(), `entrypoint "testplug" is dynamically linked`) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("install of a dynamic plugin: %v", err)
	}
	if list, err := td.ctl.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after the refused install: %+v, %v", list, err)
	}
}

// TestFirstStartNamesUnservedHooks: a plugin whose manifest declares a
// hook its handshake does not serve fails at its first start (not at its
// first request), naming the hook, the phase and the method to add.
func TestFirstStartNamesUnservedHooks(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("routeonly", []string{"-route-only"},
		hooks("route", "GET", "/own/*path", "2s", "fail-closed", 0)+hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 0))))
	st := waitState(t, td.ctl, "routeonly", 30*time.Second, "failed", func(s *host.PluginStatus) bool { return s.State == StateFailed })
	for _, want := range []string{`plugin.toml: [[hooks]] "request-hook" is a request hook, but the plugin's handshake serves no request phase`,
		"add a HookRequest (plugin.RequestHook) method", "or remove the hook from plugin.toml"} {
		if !strings.Contains(st.Detail, want) {
			t.Errorf("detail %q\ndoes not say %q", st.Detail, want)
		}
	}
}

// TestFirstStartNamesUnservedStages: a plugin that serves frame streams but
// has no handler for a manifest stage's role fails at its first start,
// naming the stage, the role and the method to add (PluginInfo.frameRoles).
func TestFirstStartNamesUnservedStages(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("noframes", []string{"-route-only"},
		hooks("route", "GET", "/own/*path", "2s", "fail-closed", 0)+streamStage("tagger", "video/segment", "transform", "fail-open", "1s", 0))))
	st := waitState(t, td.ctl, "noframes", 30*time.Second, "failed", func(s *host.PluginStatus) bool { return s.State == StateFailed })
	for _, want := range []string{`plugin.toml: [[streams]] "tagger" is a transform stage, but the plugin's handshake serves no transform frames`,
		"add a FilterFrame (plugin.FrameFilter) method", "or remove the stage from plugin.toml"} {
		if !strings.Contains(st.Detail, want) {
			t.Errorf("detail %q\ndoes not say %q", st.Detail, want)
		}
	}
}

// TestFirstStartRefusesAnotherName: a plugin whose handshake calls it by
// another name than the one it is installed as (PluginInfo.name) fails at
// its first start, saying both names.
func TestFirstStartRefusesAnotherName(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("honest", []string{"-claim", "impostor"},
		hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 0))))
	st := waitState(t, td.ctl, "honest", 30*time.Second, "failed", func(s *host.PluginStatus) bool { return s.State == StateFailed })
	if want := `the plugin calls itself "impostor", but is installed as "honest"`; !strings.Contains(st.Detail, want) {
		t.Errorf("detail %q\ndoes not say %q", st.Detail, want)
	}
}
