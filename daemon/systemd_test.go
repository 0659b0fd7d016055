//go:build linux

package daemon

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
)

// dimplugd under systemd, without systemd: the tests play its part. They
// receive sd_notify messages on a NOTIFY_SOCKET of their own, pass
// listening sockets the way systemd's socket activation does (descriptors
// 3 and up, LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set in the child
// before it executes dimplugd), and put the daemon in a cgroup as a
// service with Delegate=yes would be. See docs/operate-systemd.md.

// notifySink is a fake NOTIFY_SOCKET: it collects every datagram.
type notifySink struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newNotifySink(t *testing.T, dir string) *notifySink {
	t.Helper()
	n := &notifySink{path: filepath.Join(dir, "notify.sock")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := c.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

// all returns the messages received so far.
func (n *notifySink) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// find returns the index of the first message from index from on that has
// every one of the lines want, or -1.
func (n *notifySink) find(from int, want ...string) int {
	msgs := n.all()
	for i := from; i < len(msgs); i++ {
		lines := strings.Split(msgs[i], "\n")
		ok := true
		for _, w := range want {
			found := false
			for _, l := range lines {
				found = found || l == w || (strings.HasSuffix(w, "*") && strings.HasPrefix(l, strings.TrimSuffix(w, "*")))
			}
			ok = ok && found
		}
		if ok {
			return i
		}
	}
	return -1
}

// wait waits for a message from index from on with every line of want (a
// trailing * matches any rest of the line) and returns its index.
func (n *notifySink) wait(t *testing.T, d *daemonProc, from int, want ...string) int {
	t.Helper()
	i := -1
	if !poll(30*time.Second, func() bool { i = n.find(from, want...); return i >= 0 }) {
		t.Fatalf("no sd_notify message with %q after message %d; got %q\ndaemon log:\n%s", want, from, n.all(), d.log)
	}
	return i
}

// TestSystemdNotify: dimplugd says READY=1 once both sockets serve and its
// enabled plugin runs; STATUS= says how many plugins run; WATCHDOG=1 comes
// when the unit sets WatchdogSec; an upgrade in place says RELOADING=1 (with
// MONOTONIC_USEC=) and the new image READY=1 again; SIGTERM says STOPPING=1
// before the daemon stops.
func TestSystemdNotify(t *testing.T) {
	d := newDaemonProc(t)
	bin := filepath.Join(t.TempDir(), "dimplugd")
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), bin, 0o755)
	d.bin = bin
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	d.waitRunning("media-badge", 0)
	d.stop()

	sink := newNotifySink(t, filepath.Dir(d.state))
	d.env = []string{"NOTIFY_SOCKET=" + sink.path, "WATCHDOG_USEC=400000"}
	d.prelude = "export WATCHDOG_PID=$$"
	d.start()
	ready := sink.wait(t, d, 0, "READY=1", "STATUS=serving 1 plugin (1 running)")
	// READY=1 came after the plugin started, so it runs now, and both
	// sockets serve.
	if st := d.inspect("media-badge"); st.State != StateRunning {
		t.Errorf("READY=1 sent while media-badge is %s", st.State)
	}
	dial(t, d.socket).Close()
	for _, m := range sink.all()[:ready] {
		if strings.Contains(m, "READY=1") {
			t.Errorf("READY=1 twice: %q", sink.all())
		}
	}
	sink.wait(t, d, ready+1, "WATCHDOG=1")

	d.ctl(false, "disable", "media-badge")
	sink.wait(t, d, ready, "STATUS=serving 1 plugin (1 stopped)")

	if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	reload := sink.wait(t, d, ready, "RELOADING=1", "MONOTONIC_USEC=*")
	sink.wait(t, d, reload, "READY=1", "STATUS=serving 1 plugin (1 stopped)")
	if !strings.Contains(d.log.String(), "upgrading in place") {
		t.Errorf("no upgrade in place:\n%s", d.log)
	}

	last := len(sink.all())
	d.stop()
	stopping := sink.wait(t, d, last, "STOPPING=1")
	if sink.find(stopping+1, "READY=1") >= 0 {
		t.Errorf("READY=1 after STOPPING=1: %q", sink.all())
	}
}

// activationSockets makes a listening Unix stream socket at each path, as
// systemd's .socket unit does, and returns files to pass to the daemon;
// the test's own listeners are closed without removing the files.
func activationSockets(t *testing.T, paths ...string) []*os.File {
	t.Helper()
	var files []*os.File
	for _, p := range paths {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return files
}

// TestSystemdSocketActivation: dimplugd serves the host and control
// sockets systemd passes (descriptors 3 and 4, by name) instead of making
// its own: hosts and dimplugctl work over them, the peer check still
// refuses other users, the file modes set by the socket unit stay, an
// upgrade in place passes them on, and on stop the files stay (systemd's).
func TestSystemdSocketActivation(t *testing.T) {
	d := newDaemonProc(t)
	bin := filepath.Join(t.TempDir(), "dimplugd")
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), bin, 0o755)
	d.bin = bin
	dir := filepath.Dir(d.state)
	// Passed in the order control, host: the names decide, not the order.
	d.files = activationSockets(t, d.control, d.socket)
	for _, p := range []string{d.socket, d.control} {
		if err := os.Chmod(p, 0o666); err != nil { // SocketMode= in the unit, and loose
			t.Fatal(err)
		}
	}
	d.env = []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=control:host"}
	d.prelude = "export LISTEN_PID=$$"
	sink := newNotifySink(t, dir)
	d.env = append(d.env, "NOTIFY_SOCKET="+sink.path)
	d.start()
	sink.wait(t, d, 0, "READY=1")
	d.ctl(false, "install", "--yes", exampleDir(t))
	pid := d.waitRunning("media-badge", 0).PID
	dial(t, d.socket).Close()
	if !strings.Contains(d.log.String(), "socket="+d.socket) {
		t.Errorf("the daemon does not name the activated host socket:\n%s", d.log)
	}
	for _, p := range []string{d.socket, d.control} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o666 {
			t.Errorf("%s: %v %v; the socket unit's mode 0666 must stay", p, fi.Mode(), err)
		}
	}
	// SO_PEERCRED still decides: mode 0666 lets nobody connect, and the
	// daemon refuses it.
	ctl := filepath.Join(dir, "dimplugctl")
	copyFile(t, buildBin(t, "./cmd/dimplugctl", true), ctl, 0o755)
	cmd := exec.Command(ctl, "--socket", d.control, "ls")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "permission denied: uid 65534 is not root") {
		t.Errorf("nobody on the activated control socket: %v\n%s", err, out)
	}

	// An upgrade in place passes systemd's sockets on (and the plugin).
	before := len(sink.all())
	if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	sink.wait(t, d, before, "READY=1")
	if st := d.waitRunning("media-badge", 0); st.PID != pid {
		t.Errorf("media-badge restarted by the upgrade: pid %d, was %d", st.PID, pid)
	}
	dial(t, d.socket).Close()
	if n := strings.Count(d.log.String(), "dimplugd started"); n != 2 {
		t.Errorf("%d starts in the log, want 2:\n%s", n, d.log)
	}
	d.stop()
	for _, p := range []string{d.socket, d.control} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the daemon removed the activated socket %s: %v", p, err)
		}
	}
}

// TestSystemdSocketActivationRefused: a descriptor passed as a socket is
// used only once checked: a file, a datagram socket or an unknown name
// make dimplugd refuse to start, saying what is wrong.
func TestSystemdSocketActivationRefused(t *testing.T) {
	bin := buildBin(t, "./cmd/dimplugd", false)
	dir := shortTempDir(t, "dpa")
	regular, err := os.Create(filepath.Join(dir, "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "dgram.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	dgramFile, err := dgram.File()
	if err != nil {
		t.Fatal(err)
	}
	dgram.Close()
	defer dgramFile.Close()
	unlistened, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "ok.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	okFile, err := unlistened.File()
	if err != nil {
		t.Fatal(err)
	}
	unlistened.Close()
	defer okFile.Close()

	for _, tt := range []struct {
		name  string
		files []*os.File
		names string
		want  string
	}{
		{"file", []*os.File{regular}, "host", "socket activation: the host socket (descriptor 3): not a socket"},
		{"datagram", []*os.File{dgramFile}, "host", "socket activation: the host socket (descriptor 3): a datagram socket, not a stream socket"},
		{"unknown name", []*os.File{okFile}, "web", `socket activation: descriptor 3 is named "web"`},
		{"unnamed", []*os.File{okFile}, "", `socket activation: descriptor 3 is named "LISTEN_FD_3"`},
		{"twice", []*os.File{okFile, okFile}, "host:host", `socket activation: two descriptors are named "host"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$; exec "$0" "$@"`, bin, "serve", "--insecure-no-sandbox",
				"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "h.sock"))
			cmd.Env = append(os.Environ(), fmt.Sprintf("LISTEN_FDS=%d", len(tt.files)), "LISTEN_FDNAMES="+tt.names)
			cmd.ExtraFiles = tt.files
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(out.String(), tt.want) {
					t.Errorf("dimplugd: %v, want a failure saying %q:\n%s", err, tt.want, &out)
				}
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("dimplugd did not refuse its descriptors within 20s:\n%s", &out)
			}
		})
	}
}

// TestSystemdCgroupDelegation: started in a cgroup of its own, as a
// service with Delegate=yes, dimplugd --cgroup-parent=auto puts each
// plugin's sandbox in a cgroup below it (<own>/plugins/<id>), on cgroup v1
// in the memory, pids and cpu hierarchies, on v2 with itself moved into
// <own>/daemon; after a stop nothing of it is left there.
func TestSystemdCgroupDelegation(t *testing.T) {
	if runtimeArgs(t) != nil {
		t.Skip("needs the container sandbox")
	}
	own := fmt.Sprintf("dimplugd-delegated-%d", os.Getpid())
	unified := cgroups.IsCgroup2UnifiedMode()
	var dirs []string // the test's cgroup in each hierarchy it joins
	if unified {
		dirs = []string{filepath.Join("/sys/fs/cgroup", own)}
	} else {
		for _, c := range []string{"memory", "pids", "cpu"} {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", c, own))
		}
	}
	t.Cleanup(func() { removeCgroupTree(t, own) })
	var prelude []string
	for _, dir := range dirs {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		prelude = append(prelude, "echo $$ > "+filepath.Join(dir, "cgroup.procs"))
	}

	d := newDaemonProc(t)
	d.cgroup = "" // --cgroup-parent=auto instead
	d.args = []string{"--cgroup-parent=auto"}
	d.prelude = strings.Join(prelude, " && ")
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	pid := d.waitRunning("media-badge", 0).PID
	if !strings.Contains(d.log.String(), "cgroup_parent=/"+own+"/plugins") {
		t.Errorf("the daemon does not log its delegated cgroup parent:\n%s", d.log)
	}

	daemonCg := readCgroups(t, d.cmd.Process.Pid)
	pluginCg := readCgroups(t, pid)
	for _, c := range []string{"memory", "pids", "cpu"} {
		key := c
		if unified {
			key = ""
		}
		if !strings.HasPrefix(pluginCg[key], "/"+own+"/plugins/") {
			t.Errorf("plugin's %s cgroup %q is not under the daemon's /%s/plugins", c, pluginCg[key], own)
		}
	}
	if unified && daemonCg[""] != "/"+own+"/daemon" {
		t.Errorf("daemon in cgroup %q, want the leaf /%s/daemon", daemonCg[""], own)
	}
	if !unified && daemonCg["memory"] != "/"+own {
		t.Errorf("daemon in memory cgroup %q, want /%s (v1: it stays)", daemonCg["memory"], own)
	}
	// The plugin's limits are set on its own cgroup below the daemon's.
	memDir := filepath.Join("/sys/fs/cgroup", pluginCg[""])
	if !unified {
		memDir = filepath.Join("/sys/fs/cgroup/memory", pluginCg["memory"])
	}
	if _, err := os.Stat(memDir); err != nil {
		t.Errorf("plugin cgroup: %v", err)
	}

	d.stop()
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "plugins")); !os.IsNotExist(err) {
			entries, _ := os.ReadDir(filepath.Join(dir, "plugins"))
			t.Errorf("%s/plugins left after a clean stop (%d entries)", dir, len(entries))
		}
	}
}

// readCgroups parses /proc/<pid>/cgroup: the cgroup by v1 controller, and
// by "" on v2.
func readCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

// removeCgroupTree removes cgroup /name and everything below it in every
// hierarchy (deepest first), after the processes in it have gone.
func removeCgroupTree(t *testing.T, name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	roots = append(roots, filepath.Join("/sys/fs/cgroup", name))
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if !poll(10*time.Second, func() bool {
				err := syscall.Rmdir(dirs[i])
				return err == nil || err == syscall.ENOENT
			}) {
				t.Errorf("cannot remove cgroup %s", dirs[i])
			}
		}
	}
}
