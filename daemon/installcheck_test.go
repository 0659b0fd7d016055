//go:build linux

package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

func TestCheckFitsMachine(t *testing.T) {
	small := machine{memory: 2 * manifest.GiB, cpus: 2, nrOpen: 4096}
	m := func(p manifest.Permissions) *manifest.Manifest {
		return &manifest.Manifest{Name: "big", Permissions: p}
	}
	tests := []struct {
		name  string
		p     manifest.Permissions
		grant *manifest.Permissions
		prev  *registry.Record
		want  []string // "" entries: no error
	}{
		{"fits", manifest.Permissions{Memory: 2 * manifest.GiB, CPU: 2, OpenFiles: 4096, Tmp: manifest.GiB}, nil, nil, nil},
		{"nothing asked", manifest.Permissions{}, nil, nil, nil},
		{"memory", manifest.Permissions{Memory: 3 * manifest.GiB}, nil, nil,
			[]string{`plugin "big" could never start on this machine:`, "plugin.toml: permissions.memory: 3 GiB is more than this machine's 2 GiB of memory"}},
		{"tmp", manifest.Permissions{Tmp: 4 * manifest.GiB}, nil, nil,
			[]string{"plugin.toml: permissions.tmp: 4 GiB is more than this machine's 2 GiB of memory (/tmp is kept in memory)"}},
		{"cpu", manifest.Permissions{CPU: 2.5}, nil, nil,
			[]string{"plugin.toml: permissions.cpu: 2.5 cores is more than this machine's 2"}},
		{"open files", manifest.Permissions{OpenFiles: 8192}, nil, nil,
			[]string{"plugin.toml: permissions.open_files: 8192 is more than this machine allows (fs.nr_open is 4096)"}},
		{"all at once", manifest.Permissions{Memory: 3 * manifest.GiB, CPU: 3}, nil, nil,
			[]string{"permissions.memory:", "\n  plugin.toml: permissions.cpu:"}},
		{"a smaller grant fits", manifest.Permissions{Memory: 64 * manifest.GiB}, &manifest.Permissions{Memory: manifest.GiB}, nil, nil},
		{"a grant too big", manifest.Permissions{}, &manifest.Permissions{CPU: 8}, nil,
			[]string{"grant: cpu: 8 cores is more than this machine's 2"}},
		{"upgrade keeps the checked grant", manifest.Permissions{Memory: 64 * manifest.GiB}, nil, &registry.Record{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkFitsMachine(small, m(tt.p), tt.grant, tt.prev)
			if len(tt.want) == 0 {
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
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if mc := thisMachine(); mc.memory < 16*manifest.MiB || mc.cpus < 1 || mc.nrOpen < 1024 {
		t.Errorf("thisMachine() = %+v", mc)
	}
}

// TestInstallRefusesNeverStarting: through the control API, a plugin that
// could never start is refused at install with the file and field named,
// whether the manifest package (paths the sandbox owns, limits no machine
// has) or the daemon (more than this machine has) finds it; nothing is
// left installed, and a good plugin installs afterwards.
func TestInstallRefusesNeverStarting(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	install := func(name, perms string, real bool) error {
		t.Helper()
		dir := t.TempDir() // refused before it runs: a stand-in entrypoint is enough
		manifest := testplugManifest(name, nil, "[permissions]\n"+perms)
		if real {
			dir = pluginDir(t, manifest)
		} else if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		} else if err := os.WriteFile(filepath.Join(dir, "testplug"), []byte("#!/bin/false\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		archive, err := host.Archive(dir)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err = td.ctl.Install(ctx, archive, host.InstallOptions{Enable: true})
		return err
	}
	for _, tt := range []struct{ name, perms, want string }{
		{"proc-reader", `read_only_paths = ["/proc/1"]` + "\n", `plugin.toml: permissions.read_only_paths[0]: "/proc/1": the sandbox mounts its own /proc`},
		{"tmp-reader", `read_only_paths = ["/tmp"]` + "\n", `plugin.toml: permissions.read_only_paths[0]: "/tmp": the sandbox mounts its own /tmp`},
		{"fork-bomb", "pids = 100000000\n", "plugin.toml: permissions.pids: 100000000 is above the maximum of 4194304"},
		{"huge", `memory = "64TiB"` + "\n", "plugin.toml: permissions.memory: 64 TiB is more than this machine's"},
		{"many-cores", "cpu = 1024\n", "plugin.toml: permissions.cpu: 1024 cores is more than this machine's"},
	} {
		err := install(tt.name, tt.perms, true) // a real entrypoint: a stand-in script is refused in the sandbox first
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("install %s: %v\nwant an error containing %s", tt.name, err, tt.want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := td.ctl.List(ctx)
	if err != nil || len(list) != 0 {
		t.Fatalf("after refused installs: %+v, %v", list, err)
	}
	if err := install("fine", `memory = "32MiB"`+"\n", true); err != nil {
		t.Fatalf("a plugin that fits: %v", err)
	}
	waitState(t, td.ctl, "fine", 30*time.Second, "running", running)
}
