//go:build linux

package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/logstore"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// printCount has testplug print n numbered lines ("line 000042 xxx…", size
// bytes each) on stdout, from number from.
func printCount(t *testing.T, s *host.Session, route string, from, n, size int) {
	t.Helper()
	r := dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("%s?print=count&from=%d&n=%d&size=%d", route, from, n, size)), nil)
	if r.Kind != host.Respond || r.Response.Status != 200 {
		t.Fatalf("print count: %+v", r)
	}
}

var numberedRE = regexp.MustCompile(`^line (\d{6}) `)

// numbers returns the numbers of the numbered lines among texts, in order.
func numbers(texts []string) []int {
	var ns []int
	for _, s := range texts {
		if m := numberedRE.FindStringSubmatch(s); m != nil {
			n, _ := strconv.Atoi(m[1])
			ns = append(ns, n)
		}
	}
	return ns
}

func textsOf(lines []host.LogLine) []string {
	var ts []string
	for _, l := range lines {
		ts = append(ts, l.Text)
	}
	return ts
}

// checkNumbers fails unless ns is first, first+1, ..., last.
func checkNumbers(t *testing.T, what string, ns []int, first, last int) {
	t.Helper()
	ok := len(ns) == last-first+1
	for i := 0; ok && i < len(ns); i++ {
		ok = ns[i] == first+i
	}
	if !ok {
		t.Fatalf("%s: numbered lines %v, want %d to %d each once, in order", what, ns, first, last)
	}
}

// fileLines reads a plugin's log files as the daemon wrote them so far.
func fileLines(t *testing.T, state, name string) []logbuf.Line {
	t.Helper()
	lines, err := logstore.Tail(filepath.Join(state, "logs", name), 0, math.MaxUint64, 0)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// waitFileLine waits until a plugin's files hold a line containing text.
func waitFileLine(t *testing.T, state, name, text string) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%q in the log files of %s", text, name), func() bool {
		for _, l := range fileLines(t, state, name) {
			if strings.Contains(l.Text, text) {
				return true
			}
		}
		return false
	})
}

// TestPluginLogRotationBound: a plugin printing far more than its log
// bound leaves at most the bound on disk, each file at most its share, and
// the newest lines are the ones kept. Removing the plugin removes them.
func TestPluginLogRotationBound(t *testing.T) {
	const bound, files = 128 << 10, 4
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, PluginLogBytes: bound, PluginLogFiles: files})
	td.install(t, pluginDir(t, testplugManifest("rotor", nil, hooks("request", "GET", "/r", "60s", "fail-open", 0))))
	waitState(t, td.ctl, "rotor", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	printCount(t, s, "/r", 0, 5000, 200) // 1 MB
	waitFileLine(t, td.state, "rotor", "line 004999 ")

	dir := filepath.Join(td.state, "logs", "rotor")
	if got := logstore.Size(dir); got > bound || got < bound/2 {
		t.Errorf("%d bytes of log files, want at most %d (and over half)", got, bound)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(names) != files {
		t.Errorf("files %v, want %d", names, files)
	}
	for _, name := range names {
		if fi, err := os.Stat(name); err != nil || fi.Size() > bound/files {
			t.Errorf("%s: %v, %d bytes (a file's share is %d)", name, err, fi.Size(), bound/files)
		}
	}
	lines := fileLines(t, td.state, "rotor")
	var texts []string
	for _, l := range lines {
		texts = append(texts, l.Text)
		if strings.Contains(l.Text, "testplug ready") {
			t.Errorf("the oldest lines are still on disk: %q", l.Text)
		}
	}
	ns := numbers(texts)
	if len(ns) < 300 || ns[len(ns)-1] != 4999 {
		t.Fatalf("%d numbered lines on disk, the newest %v; want the newest (4999) and some 600", len(ns), ns[max(len(ns)-1, 0):])
	}
	for i := 1; i < len(ns); i++ {
		if ns[i] <= ns[i-1] {
			t.Fatalf("lines out of order on disk: %d after %d", ns[i], ns[i-1])
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := td.ctl.Remove(ctx, "rotor"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the log files of a removed plugin: %v", err)
	}
}

// TestPluginLogTailAcrossFiles: with fewer lines in memory than asked
// for, `logs --tail N` reads the older ones from the files, across
// rotated files, oldest first, and -f goes on with the new lines without
// a gap or a repeat.
func TestPluginLogTailAcrossFiles(t *testing.T) {
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, LogLines: 50, PluginLogBytes: 64 << 10, PluginLogFiles: 4})
	td.install(t, pluginDir(t, testplugManifest("tailed", nil, hooks("request", "GET", "/t", "60s", "fail-open", 0))))
	waitState(t, td.ctl, "tailed", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	printCount(t, s, "/t", 0, 200, 150) // 30 KB: 16 KiB files
	waitFileLine(t, td.state, "tailed", "line 000199 ")
	if names, _ := filepath.Glob(filepath.Join(td.state, "logs", "tailed", "current.log.*")); len(names) == 0 {
		t.Fatal("no rotated file")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lines, err := td.ctl.Logs(ctx, "tailed", 150, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 150 {
		t.Errorf("logs --tail 150: %d lines", len(lines))
	}
	checkNumbers(t, "logs --tail 150", numbers(textsOf(lines)), 50, 199)

	var mu sync.Mutex
	var followed []string
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := td.ctl.Logs(fctx, "tailed", 120, func(l host.LogLine) {
			mu.Lock()
			followed = append(followed, l.Text)
			mu.Unlock()
		})
		done <- err
	}()
	got := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return numbers(followed)
	}
	waitFor(t, 30*time.Second, "the history of logs -f", func() bool { ns := got(); return len(ns) > 0 && ns[len(ns)-1] == 199 })
	printCount(t, s, "/t", 200, 10, 150)
	waitFor(t, 30*time.Second, "logs -f to follow", func() bool { ns := got(); return ns[len(ns)-1] == 209 })
	stop()
	<-done
	checkNumbers(t, "logs -f --tail 120", got(), 80, 209)
}

// TestPluginLogsSurviveRestart: a plugin's log outlives the daemon, stopped
// (SIGTERM) or killed (kill -9): `dimplugctl logs` shows the lines from
// before, once each, across rotated files. With --log-format json every
// line of the daemon's own log is JSON, and --forward-plugin-logs copies
// the plugin's lines there, naming the plugin, escaped.
func TestPluginLogsSurviveRestart(t *testing.T) {
	d := newDaemonProc(t)
	d.args = []string{"--log-format", "json", "--forward-plugin-logs", "--plugin-log-size", "64KiB", "--plugin-log-files", "4"}
	d.start()
	d.ctl(false, "install", "--yes", pluginDir(t, testplugManifest("durable", nil, hooks("request", "GET", "/d", "60s", "fail-open", 0))))
	d.waitRunning("durable", 0)
	s := dial(t, d.socket)
	printCount(t, s, "/d", 0, 300, 150) // 70 KB
	printHook(t, s, "/d", "forge", 0, 0)
	waitFileLine(t, d.state, "durable", "red on stderr")
	waitFor(t, 30*time.Second, "the forged lines in the daemon's log", func() bool {
		return strings.Contains(d.log.String(), "red on stderr")
	})

	// The daemon's own log: JSON, plugin lines named and escaped.
	var forwarded, numbered int
	for _, l := range strings.Split(strings.TrimSpace(d.log.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("a line of the daemon's log is not JSON (%v): %q", err, l)
			continue
		}
		if rec["plugin"] != "durable" || rec["stream"] == nil {
			continue
		}
		forwarded++
		msg, _ := rec["msg"].(string)
		if m := rawControl([]byte(msg)); m != "" {
			t.Errorf("a forwarded line carries a raw control character %s: %q", m, msg)
		}
		if strings.HasPrefix(msg, "line ") {
			numbered++
		}
		if rec["stream"] == logbuf.Stderr && strings.Contains(msg, "red on stderr") && !strings.Contains(msg, `\x1b[31m`) {
			t.Errorf("forwarded stderr line not escaped: %q", msg)
		}
	}
	if numbered != 300 {
		t.Errorf("%d of the plugin's 300 numbered lines forwarded (%d lines in all)", numbered, forwarded)
	}

	logs := func(args ...string) []string {
		t.Helper()
		out, _ := d.ctl(false, append([]string{"--json", "logs"}, args...)...)
		var texts []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var ll host.LogLine
			if err := json.Unmarshal([]byte(l), &ll); err != nil {
				t.Fatalf("logs --json: %q: %v", l, err)
			}
			texts = append(texts, ll.Text)
		}
		return texts
	}
	// Lines 0 to 299 took 5 files of 16 KiB, of which the oldest went.
	onDisk := numbers(func() (ts []string) {
		for _, l := range fileLines(t, d.state, "durable") {
			ts = append(ts, l.Text)
		}
		return ts
	}())
	first := onDisk[0]
	if first == 0 {
		t.Fatalf("nothing rotated out: %v", onDisk)
	}

	d.stop()
	d.start()
	d.waitRunning("durable", 0)
	checkNumbers(t, "logs after SIGTERM", numbers(logs("-n", "0", "durable")), first, 299)
	tail := logs("-n", "60", "durable")
	if len(tail) != 60 {
		t.Errorf("logs --tail 60: %d lines", len(tail))
	}
	ns := numbers(tail) // then the forged lines and the daemon's
	checkNumbers(t, "logs --tail 60 after SIGTERM", ns, 300-len(ns), 299)

	s = dial(t, d.socket)
	printCount(t, s, "/d", 300, 5, 150)
	waitFileLine(t, d.state, "durable", "line 000304 ")
	d.kill9()
	d.start()
	d.waitRunning("durable", 0)
	all := logs("-n", "0", "durable")
	ns = numbers(all)
	checkNumbers(t, "logs after kill -9", ns, ns[0], 304)
	if ns[0] > 250 {
		t.Errorf("logs after kill -9 start at line %d", ns[0])
	}
	forged := 0
	for _, text := range all {
		if strings.Contains(text, "red on stderr") {
			forged++
		}
	}
	if forged != 1 {
		t.Errorf("the forged stderr line shows %d times after two restarts, want once", forged)
	}
}

// TestPluginLogsAcrossUpgrade: after an upgrade in place, the new image
// appends to the same files, and `logs` shows the lines from before and
// after, each once.
func TestPluginLogsAcrossUpgrade(t *testing.T) {
	d := newDaemonProc(t)
	bin := filepath.Join(t.TempDir(), "dimplugd")
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), bin, 0o755)
	d.bin = bin
	d.start()
	d.ctl(false, "install", "--yes", pluginDir(t, testplugManifest("kept", nil, hooks("request", "GET", "/k", "60s", "fail-open", 0))))
	pid := d.waitRunning("kept", 0).PID
	s := dial(t, d.socket)
	printCount(t, s, "/k", 0, 50, 100)
	waitFileLine(t, d.state, "kept", "line 000049 ")

	started := strings.Count(d.log.String(), "dimplugd started")
	if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the new daemon image serving", func() bool {
		return strings.Count(d.log.String(), "dimplugd started") > started
	})
	if st := d.waitRunning("kept", 0); st.PID != pid {
		t.Fatalf("the plugin was restarted (pid %d, was %d), not adopted", st.PID, pid)
	}
	printCount(t, s, "/k", 50, 10, 100)
	waitFileLine(t, d.state, "kept", "line 000059 ")
	out, _ := d.ctl(false, "logs", "-n", "0", "kept")
	var texts []string
	for _, l := range strings.Split(out, "\n") {
		if _, text, ok := strings.Cut(l, " stdout "); ok {
			texts = append(texts, text)
		}
	}
	checkNumbers(t, "logs after the upgrade", numbers(texts), 0, 59)
	if n := strings.Count(out, "handed instance"); n != 1 {
		t.Errorf("the hand-over line shows %d times:\n%s", n, out)
	}
}
