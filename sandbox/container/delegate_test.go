//go:build linux && cgo

package container

import (
	"strings"
	"testing"
)

// TestDelegatedRoot: --cgroup-parent=auto finds the daemon's own cgroup in
// /proc/self/cgroup, refuses the root cgroup and, on v1, hierarchies that
// disagree, and does not nest again after an upgrade in place on v2.
func TestDelegatedRoot(t *testing.T) {
	const v1 = "12:pids:/system.slice/dimplugd.service\n" +
		"9:memory:/system.slice/dimplugd.service\n" +
		"4:cpu,cpuacct:/system.slice/dimplugd.service\n" +
		"3:freezer:/\n" +
		"1:name=systemd:/system.slice/dimplugd.service\n" +
		"0::/system.slice/dimplugd.service\n"
	for _, tt := range []struct {
		name, text, marker string
		unified            bool
		want, err          string
	}{
		{name: "v2", text: "0::/system.slice/dimplugd.service\n", unified: true, want: "/system.slice/dimplugd.service"},
		{name: "v2 after an upgrade", text: "0::/system.slice/dimplugd.service/daemon\n", unified: true,
			marker: "/system.slice/dimplugd.service", want: "/system.slice/dimplugd.service"},
		{name: "v2 leaf named daemon, not ours", text: "0::/srv/daemon\n", unified: true, marker: "/other", want: "/srv/daemon"},
		{name: "v2 root", text: "0::/\n", unified: true, err: "root cgroup"},
		{name: "v2 no entry", text: "1:name=systemd:/\n", unified: true, err: "no cgroup v2 entry"},
		{name: "v1", text: v1, want: "/system.slice/dimplugd.service"},
		{name: "v1 disagree", text: strings.Replace(v1, "9:memory:/system.slice/dimplugd.service", "9:memory:/other", 1), err: "differ between hierarchies"},
		{name: "v1 root", text: "9:memory:/\n12:pids:/\n4:cpu,cpuacct:/\n", err: "root cgroup"},
		{name: "v1 missing", text: "9:memory:/a\n", err: "no cgroup of the cpu hierarchy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := delegatedRoot(tt.text, tt.unified, tt.marker)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v; want an error saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
