package manifest

import (
	"reflect"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	if got := (Permissions{}).Describe(); !reflect.DeepEqual(got, []string{"no special permissions"}) {
		t.Errorf("empty Describe = %q", got)
	}
	p := Permissions{
		Memory:        64 * MiB,
		Tmp:           16 * MiB,
		Pids:          64,
		CPU:           0.5,
		OpenFiles:     256,
		ReadOnlyPaths: []string{"/srv/media"},
		OutboundHosts: []string{"api.opensubtitles.com:443", "*.tmdb.org:443"},
	}
	want := []string{
		"use up to 64 MiB of memory",
		"write up to 16 MiB to a private /tmp",
		"run up to 64 processes or threads",
		"use up to 0.5 CPU cores",
		"keep up to 256 files open",
		"read files under /srv/media (read-only)",
		"connect to api.opensubtitles.com:443 through the daemon",
		"connect to any host matching *.tmdb.org:443 through the daemon",
	}
	if got := p.Describe(); !reflect.DeepEqual(got, want) {
		t.Errorf("Describe =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := (Permissions{CPU: 1}).Describe(); got[0] != "use up to 1 CPU core" {
		t.Errorf("Describe cpu 1 = %q", got)
	}
}

func TestExceeds(t *testing.T) {
	granted := Permissions{
		Memory:        64 * MiB,
		Pids:          64,
		CPU:           1,
		ReadOnlyPaths: []string{"/srv/media"},
		OutboundHosts: []string{"api.opensubtitles.com:443", "*.tmdb.org:443"},
	}
	tests := []struct {
		name string
		p    Permissions
		want []string
	}{
		{"nothing", Permissions{}, nil},
		{"same", granted, nil},
		{"less", Permissions{Memory: 32 * MiB, CPU: 0.5, ReadOnlyPaths: []string{"/srv/media/tv"}, OutboundHosts: []string{"image.tmdb.org:443", "*.cdn.tmdb.org:443"}}, nil},
		{"more memory", Permissions{Memory: 128 * MiB}, []string{"use up to 128 MiB of memory (granted 64 MiB)"}},
		{"more cpu and pids", Permissions{CPU: 2, Pids: 65}, []string{"run up to 65 processes or threads (granted 64)", "use up to 2 CPU cores (granted 1)"}},
		{"limit granted as default", Permissions{Tmp: 16 * MiB, OpenFiles: 64}, []string{"write up to 16 MiB to a private /tmp (granted: the default)", "keep up to 64 files open (granted: the default)"}},
		{"new path", Permissions{ReadOnlyPaths: []string{"/srv/media", "/srv/mediafiles", "/srv"}}, []string{"read files under /srv/mediafiles (read-only)", "read files under /srv (read-only)"}},
		{"new hosts", Permissions{OutboundHosts: []string{"api.opensubtitles.com:80", "tmdb.org:443", "*.org:443", "evil.com:443", "api.tmdb.org:443"}}, []string{
			"connect to api.opensubtitles.com:80 through the daemon",
			"connect to tmdb.org:443 through the daemon",
			"connect to any host matching *.org:443 through the daemon",
			"connect to evil.com:443 through the daemon",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Exceeds(granted); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Exceeds =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestAllowsHost(t *testing.T) {
	p := Permissions{OutboundHosts: []string{"api.opensubtitles.com:443", "*.tmdb.org:443", "[::1]:8080", "10.0.0.1:80"}}
	tests := map[string]bool{
		"api.opensubtitles.com:443":  true,
		"API.OpenSubtitles.com:443":  true,
		"api.opensubtitles.com:80":   false,
		"opensubtitles.com:443":      false,
		"image.tmdb.org:443":         true,
		"a.b.tmdb.org:443":           true,
		"tmdb.org:443":               false,
		"eviltmdb.org:443":           false,
		"*.tmdb.org:443":             false,
		".tmdb.org:443":              false,
		"[::1]:8080":                 true,
		"10.0.0.1:80":                true,
		"10.0.0.1:81":                false,
		"api.opensubtitles.com":      false,
		"api.opensubtitles.com.:443": false,
	}
	for hp, want := range tests {
		if got := p.AllowsHost(hp); got != want {
			t.Errorf("AllowsHost(%q) = %v, want %v", hp, got, want)
		}
	}
}

func TestPermissionsValidate(t *testing.T) {
	if err := (Permissions{}).Validate(); err != nil {
		t.Errorf("zero permissions: %v", err)
	}
	err := Permissions{Memory: MiB, Pids: 4, CPU: -1, OpenFiles: 1, Tmp: 1, ReadOnlyPaths: []string{"x"}, OutboundHosts: []string{"x"}}.Validate()
	want := []string{
		"memory: 1 MiB is below the minimum of 16 MiB",
		"tmp: 1 B is below the minimum of 1 MiB",
		"pids: 4 is below the minimum of 16",
		"cpu: -1 is below the minimum of 0.01 cores",
		"open_files: 1 is below the minimum of 16",
		`read_only_paths[0]: "x" is not an absolute path`,
		`outbound_hosts[0]: "x" has no port; write host:port, e.g. "x:443"`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Errorf("Validate =\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
}

// TestNeverStarts: permissions no sandbox can start with are refused, as a
// grant (Validate) and in a manifest (Parse), with the field named.
func TestNeverStarts(t *testing.T) {
	tests := []struct {
		name  string
		p     Permissions
		toml  string // the same in a manifest's [permissions]
		field string
		want  string
	}{
		{"memory too small for Go", Permissions{Memory: 4 * MiB}, `memory = "4MiB"`, "memory", "below the minimum of 16 MiB"},
		{"tmp tiny", Permissions{Tmp: 4 * KiB}, `tmp = "4KiB"`, "tmp", "below the minimum of 1 MiB"},
		{"pids below the Go runtime", Permissions{Pids: 1}, `pids = 1`, "pids", "below the minimum of 16"},
		{"pids no kernel allows", Permissions{Pids: MaxPids + 1}, `pids = 4194305`, "pids", "above the maximum of 4194304"},
		{"cpu negative", Permissions{CPU: -0.5}, `cpu = -0.5`, "cpu", "below the minimum of 0.01 cores"},
		{"cpu absurd", Permissions{CPU: 1e9}, `cpu = 1e9`, "cpu", "above the maximum of 1024 cores"},
		{"open files tiny", Permissions{OpenFiles: 3}, `open_files = 3`, "open_files", "below the minimum of 16"},
		{"open files above nr_open", Permissions{OpenFiles: 1 << 30}, `open_files = 1073741824`, "open_files", "above the maximum of 1048576"},
		{"path in /proc", Permissions{ReadOnlyPaths: []string{"/proc/self"}}, `read_only_paths = ["/proc/self"]`, "read_only_paths[0]", "the sandbox mounts its own /proc"},
		{"path /sys", Permissions{ReadOnlyPaths: []string{"/sys"}}, `read_only_paths = ["/sys"]`, "read_only_paths[0]", "the sandbox mounts its own /sys"},
		{"path in /dev", Permissions{ReadOnlyPaths: []string{"/dev/dri"}}, `read_only_paths = ["/dev/dri"]`, "read_only_paths[0]", "the sandbox mounts its own /dev"},
		{"path in /tmp", Permissions{ReadOnlyPaths: []string{"/tmp/x"}}, `read_only_paths = ["/tmp/x"]`, "read_only_paths[0]", "the sandbox mounts its own /tmp"},
		{"nested paths", Permissions{ReadOnlyPaths: []string{"/srv/a", "/srv/a/b"}}, `read_only_paths = ["/srv/a", "/srv/a/b"]`, "read_only_paths[1]", `inside read_only_paths[0] ("/srv/a")`},
		{"containing path", Permissions{ReadOnlyPaths: []string{"/srv/a/b", "/srv"}}, `read_only_paths = ["/srv/a/b", "/srv"]`, "read_only_paths[1]", `contains read_only_paths[0] ("/srv/a/b"); grant only "/srv"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate(%+v) = %v, want %s: ...%s", tt.p, err, tt.field, tt.want)
			}
			doc := "name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"x\"\n[permissions]\n" + tt.toml + "\n"
			_, err = Parse([]byte(doc), "")
			if err == nil || !strings.Contains(err.Error(), "plugin.toml: permissions."+tt.field+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%s) = %v, want plugin.toml: permissions.%s: ...%s", tt.toml, err, tt.field, tt.want)
			}
		})
	}
	// Near the edges, still fine.
	ok := Permissions{Memory: MinMemory, Pids: MaxPids, CPU: MaxCPU, OpenFiles: MaxOpenFiles,
		ReadOnlyPaths: []string{"/srv/a", "/srv/ab", "/devices", "/tmpfiles", "/procedures"}}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v", ok, err)
	}
}
