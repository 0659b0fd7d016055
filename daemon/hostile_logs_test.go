//go:build linux

package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// forgedDaemonLine is what testplug's ?print=forge writes to pass for the
// daemon (see daemon/testdata/testplug).
const forgedDaemonLine = "12:00:00.000 daemon started instance forged (pid 1, runtime container)"

func logsOf(t *testing.T, ctl *host.Control, name string) []host.LogLine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lines, err := ctl.Logs(ctx, name, 0, nil)
	if err != nil {
		t.Fatalf("logs %s: %v", name, err)
	}
	return lines
}

// waitLogs polls a plugin's log until cond holds.
func waitLogs(t *testing.T, ctl *host.Control, name, what string, cond func([]host.LogLine) bool) []host.LogLine {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		lines := logsOf(t, ctl, name)
		if cond(lines) {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin %q: timed out waiting for %s; %d lines", name, what, len(lines))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func printHook(t *testing.T, s *host.Session, route, mode string, n, size int) {
	t.Helper()
	r := dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("%s?print=%s&n=%d&size=%d", route, mode, n, size)), nil)
	if r.Kind != host.Respond || r.Response.Status != 200 {
		t.Fatalf("print %s: %+v", mode, r)
	}
}

// heapSampler records the daemon process's peak heap while it runs.
type heapSampler struct {
	stop chan struct{}
	done chan struct{}
	peak uint64
}

func sampleHeap() *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			h.peak = max(h.peak, m.HeapInuse)
			select {
			case <-h.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return h
}

func (h *heapSampler) Stop() uint64 { close(h.stop); <-h.done; return h.peak }

func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func vmRSS() string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	return "?"
}

// TestHostileLogHugeLines: a plugin prints twelve 16 MiB lines on stdout
// (and large structured log calls). Each is kept as one line cut to the
// 8 KiB cap with a marker saying how much was cut; the daemon's heap stays
// flat while it reads them; `logs` still answers; another plugin's log and
// hooks are untouched.
func TestHostileLogHugeLines(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "spammer", extra: hooks("request", "GET", "/spam", "60s", "fail-open", 0)},
		testPlugin{name: "bystander", extra: hooks("request", "GET", "/b/:id", "10s", "fail-open", 0)})
	s := dial(t, td.socket)
	waitLogs(t, td.ctl, "bystander", "its ready line", func(ls []host.LogLine) bool {
		for _, l := range ls {
			if l.Stream == logbuf.Log && strings.Contains(l.Text, "testplug ready") {
				return true
			}
		}
		return false
	})
	bystanderBefore := logsOf(t, td.ctl, "bystander")

	const n, size = 12, 16 << 20
	before := heapAfterGC()
	rssBefore := vmRSS()
	hs := sampleHeap()
	printHook(t, s, "/spam", "huge", n, size)
	marker := logbuf.CutMarker(size - logbuf.DefaultLineBytes)
	lines := waitLogs(t, td.ctl, "spammer", "twelve cut lines", func(ls []host.LogLine) bool {
		c := 0
		for _, l := range ls {
			if l.Stream == logbuf.Stdout && strings.HasSuffix(l.Text, marker) {
				c++
			}
		}
		return c == n
	})
	peak := hs.Stop()
	after := heapAfterGC()
	t.Logf("%d lines of %d MiB on stdout: daemon heap in use %.1f MiB before, peak %.1f MiB while reading, %.1f MiB after (GC); RSS %s before, %s after",
		n, size>>20, float64(before)/(1<<20), float64(peak)/(1<<20), float64(after)/(1<<20), rssBefore, vmRSS())
	for _, l := range lines {
		if len(l.Text) > logbuf.DefaultLineBytes+len(marker) {
			t.Fatalf("a %d byte line was kept", len(l.Text))
		}
	}
	if peak > before+32<<20 || after > before+8<<20 {
		t.Errorf("the daemon's heap grew from %d to a peak of %d (%d after) bytes reading %d MiB of log", before, peak, after, n*size>>20)
	}

	// The Logger capability: each call is one line, cut the same way.
	const logSize = 1 << 20
	for i := 0; i < 4; i++ {
		printHook(t, s, "/spam", "biglog", 0, logSize)
	}
	logMarker := logbuf.CutMarker(len("INFO ") + logSize - logbuf.DefaultLineBytes)
	waitLogs(t, td.ctl, "spammer", "four cut Logger lines", func(ls []host.LogLine) bool {
		c := 0
		for _, l := range ls {
			if l.Stream == logbuf.Log && strings.HasSuffix(l.Text, logMarker) && len(l.Text) == logbuf.DefaultLineBytes+len(logMarker) {
				c++
			}
		}
		return c == 4
	})

	// The bystander's log is as it was, and it still works.
	if got := logsOf(t, td.ctl, "bystander"); len(got) < len(bystanderBefore) || got[0] != bystanderBefore[0] {
		t.Errorf("bystander log changed: %d lines, was %d", len(got), len(bystanderBefore))
	}
	if r := dispatch(t, s, host.PhaseRequest, get("/b/1"), nil); r.Kind != host.MutateRequest {
		t.Errorf("bystander hook: %+v", r)
	}
	for _, name := range []string{"spammer", "bystander"} {
		if st := waitState(t, td.ctl, name, 5*time.Second, "running", running); st.Restarts != 0 {
			t.Errorf("%s restarted: %+v", name, st)
		}
	}
}

// TestHostileLogByteCap: a plugin printing many long lines keeps at most
// the configured bytes of log (and each line at most the configured line
// cap); the newest lines are the ones kept.
func TestHostileLogByteCap(t *testing.T) {
	const capBytes, lineBytes = 256 << 10, 1 << 10
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, LogBytes: capBytes, LogLineBytes: lineBytes})
	td.install(t, pluginDir(t, testplugManifest("chatty", nil, hooks("request", "GET", "/spam", "60s", "fail-open", 0))))
	waitState(t, td.ctl, "chatty", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	const n, size = 3000, 2000
	printHook(t, s, "/spam", "many", n, size)
	marker := logbuf.CutMarker(size - lineBytes)
	// The last line printed is in the log once all were read.
	lines := waitLogs(t, td.ctl, "chatty", "the lines", func(ls []host.LogLine) bool {
		cut := 0
		for _, l := range ls {
			if l.Stream == logbuf.Stderr && strings.HasSuffix(l.Text, marker) {
				cut++
			}
		}
		return cut >= capBytes/(lineBytes+len(marker))-1
	})
	time.Sleep(200 * time.Millisecond) // let the reader finish
	lines = logsOf(t, td.ctl, "chatty")
	total := 0
	for _, l := range lines {
		total += len(l.Text)
		if len(l.Text) > lineBytes+len(marker) {
			t.Fatalf("a %d byte line was kept, over the %d byte line cap", len(l.Text), lineBytes)
		}
	}
	t.Logf("%d lines of %d bytes printed: %d lines, %d bytes of text kept (cap %d)", n, size, len(lines), total, capBytes)
	if total > capBytes {
		t.Errorf("%d bytes of log kept, over the %d byte cap", total, capBytes)
	}
	if total < capBytes/2 {
		t.Errorf("only %d bytes of log kept", total)
	}
	u, err := td.unit("chatty")
	if err != nil {
		t.Fatal(err)
	}
	if nl, nb := u.logs.Size(); nb > capBytes || nl > logbuf.DefaultLines {
		t.Errorf("buffer holds %d lines, %d bytes", nl, nb)
	}
}

// rawControl returns the first character in out that must never reach the
// operator's terminal: a C0 control other than tab and newline, DEL, a C1
// control, or a byte that is not UTF-8. It returns "" when there is none.
func rawControl(out []byte) string {
	for i := 0; i < len(out); {
		r, size := utf8.DecodeRune(out[i:])
		switch {
		case r == utf8.RuneError && size == 1,
			r < 0x20 && r != '\t' && r != '\n',
			r == 0x7f, r >= 0x80 && r <= 0x9f:
			return fmt.Sprintf("%q at %d", out[i:i+size], i)
		}
		i += size
	}
	return ""
}

// TestHostileLogForgery: a plugin prints lines that look like the daemon's,
// carriage returns that would overwrite a line, and terminal escape
// sequences (clear screen, window title, clipboard, C1 CSI), on stdout,
// stderr and through its Logger. The daemon keeps their true source;
// `dimplugctl logs`, plain and --json, prints them escaped, each under the
// plugin's source, and the daemon's own lines stay the daemon's.
func TestHostileLogForgery(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "forger", extra: hooks("request", "GET", "/forge", "10s", "fail-open", 0)})
	s := dial(t, td.socket)
	printHook(t, s, "/forge", "forge", 0, 0)
	lines := waitLogs(t, td.ctl, "forger", "the forged lines", func(ls []host.LogLine) bool {
		var out, err, log bool
		for _, l := range ls {
			out = out || l.Stream == logbuf.Stdout && strings.Contains(l.Text, "\x1b]52")
			err = err || l.Stream == logbuf.Stderr && strings.Contains(l.Text, "red on stderr")
			log = log || l.Stream == logbuf.Log && strings.Contains(l.Text, "from the logger")
		}
		return out && err && log
	})
	forged := 0
	for _, l := range lines {
		if strings.Contains(l.Text, "forged") {
			forged++
			if l.Stream == logbuf.Daemon {
				t.Errorf("a plugin's line has the daemon as its source: %q", l.Text)
			}
		}
	}
	if forged < 3 {
		t.Fatalf("found %d forged lines, want 3 or more: %+v", forged, lines)
	}

	// Through the real CLI: plain text.
	ctl := buildBin(t, "./cmd/dimplugctl", false)
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(ctl, append([]string{"--socket", td.control}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("dimplugctl %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return out
	}
	out := run("logs", "-n", "0", "forger")
	if m := rawControl(out); m != "" {
		t.Errorf("dimplugctl logs printed a raw control character %s:\n%q", m, out)
	}
	lineRE := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d\d\d (daemon|stdout|stderr|log   ) (.*)$`)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	var sawEscaped, sawDaemon bool
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Errorf("dimplugctl logs printed a line without its time and source: %q", sc.Text())
			continue
		}
		if m[1] == "daemon" {
			sawDaemon = true
			if strings.Contains(m[2], "forged") {
				t.Errorf("a forged line printed as the daemon's: %q", sc.Text())
			}
		}
		if strings.Contains(m[2], `\x1b[2J\x1b[H\x1b]0;pwned\a`) && strings.Contains(m[2], `\u009b31mC1\x7f\bback`) {
			sawEscaped = true
		}
	}
	if !sawEscaped || !sawDaemon {
		t.Errorf("escaped sequence shown: %v, daemon lines shown: %v:\n%s", sawEscaped, sawDaemon, out)
	}
	for _, want := range []string{
		`stdout innocent\r` + forgedDaemonLine,
		`log    INFO from the logger\n` + forgedDaemonLine + `\x1b[2K k=v\rforged`,
		`stderr \x1b[31mred on stderr\x1b[0m`,
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("dimplugctl logs output lacks %q:\n%s", want, out)
		}
	}

	// --json: valid JSON per line, terminal-safe, and lossless.
	out = run("--json", "logs", "-n", "0", "forger")
	if m := rawControl(out); m != "" {
		t.Errorf("dimplugctl --json logs printed a raw control character %s", m)
	}
	var decoded []host.LogLine
	for _, l := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var ll host.LogLine
		if err := json.Unmarshal(l, &ll); err != nil {
			t.Fatalf("--json line %q: %v", l, err)
		}
		decoded = append(decoded, ll)
	}
	var found bool
	for _, l := range decoded {
		if l.Stream == logbuf.Stdout && strings.Contains(l.Text, "\x1b]52;c;") && strings.Contains(l.Text, "\u009b31mC1\x7f\b") {
			found = true
		}
	}
	if !found {
		t.Errorf("--json does not carry the plugin's text intact: %+v", decoded)
	}

	// -f: a follower sees new lines escaped too, as they come.
	cmd := exec.Command(ctl, "--socket", td.control, "logs", "-f", "-n", "0", "forger")
	var fout syncLog
	cmd.Stdout = &fout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	time.Sleep(500 * time.Millisecond) // let it subscribe
	printHook(t, s, "/forge", "forge", 0, 0)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(fout.String(), `\x1b[31mred on stderr`) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	got := fout.String()
	if !strings.Contains(got, `\x1b[31mred on stderr`) {
		t.Errorf("logs -f did not show the new lines: %q", got)
	}
	if m := rawControl([]byte(got)); m != "" {
		t.Errorf("logs -f printed a raw control character %s", m)
	}
	if st := waitState(t, td.ctl, "forger", 5*time.Second, "running", running); st.Restarts != 0 {
		t.Errorf("forger restarted: %+v", st)
	}
}
