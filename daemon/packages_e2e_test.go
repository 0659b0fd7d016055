package daemon

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// ctlRun runs dimplugctl with stdin and returns stdout, stderr, the exit
// code and the process's peak RSS in bytes.
func (p *daemonProc) ctlRun(stdin io.Reader, args ...string) (string, string, int, int64) {
	p.t.Helper()
	bin := buildBin(p.t, "./cmd/dimplugctl", true)
	cmd := exec.Command(bin, append([]string{"--socket", p.control}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	// The peak RSS is the process's own VmHWM, read while it runs: the
	// rusage of a waited child is no good here, since Linux counts in it
	// the memory of the test process the child was forked from before it
	// executed dimplugctl.
	var rss atomic.Int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
				if n := statusField(string(b), "VmHWM"); n > rss.Load() {
					rss.Store(n)
				}
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	<-sampled
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatal(err)
	}
	return out.String(), errb.String(), code, rss.Load()
}

// statusField reads a "kB" field of /proc/<pid>/status, in bytes (0 when
// absent: a process that has exited, or a zombie).
func statusField(status, field string) int64 {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n * 1024
		}
	}
	return 0
}

// ctlIn runs dimplugctl in dir (keygen, pack write files there).
func ctlIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin := buildBin(t, "./cmd/dimplugctl", true)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dimplugctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// procStatus reads a field of /proc/<pid>/status in bytes (kB fields).
func procStatus(t *testing.T, pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := statusField(string(b), field)
	if n == 0 {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return n
}

// procWritten is how many bytes the process caused to be written to
// storage (/proc/<pid>/io write_bytes).
func procWritten(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// packageFixture is a plugin directory with a key pair beside it.
type packageFixture struct {
	dir, work string
	keyID     string
}

func newPackageFixture(t *testing.T) packageFixture {
	f := packageFixture{dir: exampleDir(t), work: t.TempDir()}
	out := ctlIn(t, f.work, "keygen", "--unencrypted", "-o", "pub")
	f.keyID = strings.Fields(out)[1]
	f.keyID = strings.TrimSuffix(f.keyID, ":")
	ctlIn(t, f.work, "keygen", "--unencrypted", "-o", "other")
	return f
}

func (f packageFixture) pack(t *testing.T, name string, args ...string) string {
	out := filepath.Join(f.work, name)
	ctlIn(t, f.work, append([]string{"pack", f.dir, "-o", out}, args...)...)
	return out
}

// rewrite decompresses a .dimplug, passes each entry to edit (which may
// change it, or return nil to drop it) and writes it back compressed.
func rewrite(t *testing.T, in string, edit func(h *tar.Header, data []byte) (*tar.Header, []byte)) []byte {
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	tr, tw := tar.NewReader(zr), tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		h, data = edit(h, data)
		if h == nil {
			continue
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func dialCtl(t *testing.T, p *daemonProc) *host.Control {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := host.DialControl(ctx, p.control)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func streamInstall(c *host.Control, pkg []byte, allowUnsigned bool) (*host.Installed, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return c.InstallStream(ctx, bytes.NewReader(pkg), host.StreamOptions{InstallOptions: host.InstallOptions{Enable: true}, AllowUnsigned: allowUnsigned})
}

// TestPackageSignVerify: keygen, pack --sign, trust add, install shows the
// publisher and the daemon verifies; a tampered file, a key that is not
// trusted and a wrong pin are refused by the daemon itself (through the Go
// API, past the CLI's own checks), saying why on both sides.
func TestPackageSignVerify(t *testing.T) {
	f := newPackageFixture(t)
	p := newDaemonProc(t)
	p.start()
	signed := f.pack(t, "signed.dimplug", "--sign", filepath.Join(f.work, "pub.key"))
	other := f.pack(t, "other.dimplug", "--sign", filepath.Join(f.work, "other.key"))

	// Not trusted yet: the CLI refuses before sending.
	_, errOut, code, _ := p.ctlRun(nil, "install", "--yes", signed)
	if code != 5 || !strings.Contains(errOut, "not trusted") {
		t.Fatalf("untrusted: exit %d, %s", code, errOut)
	}
	out, _ := p.ctl(false, "trust", "add", filepath.Join(f.work, "pub.pub"), "--comment", "Example Publisher <ex@example.org>")
	if !strings.Contains(out, f.keyID) {
		t.Fatalf("trust add: %s", out)
	}
	out, _ = p.ctl(false, "trust", "ls")
	if !strings.Contains(out, f.keyID) || !strings.Contains(out, "Example Publisher") {
		t.Fatalf("trust ls: %s", out)
	}

	c := dialCtl(t, p)
	// A file changed after signing (same size): the manifest still
	// verifies, the file's hash does not.
	tampered := rewrite(t, signed, func(h *tar.Header, data []byte) (*tar.Header, []byte) {
		if h.Name == "media-badge" {
			data = bytes.Clone(data)
			data[len(data)/2] ^= 0xff
		}
		return h, data
	})
	if _, err := streamInstall(c, tampered, false); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("tampered: %v", err)
	}
	// A manifest changed after signing.
	forged := rewrite(t, signed, func(h *tar.Header, data []byte) (*tar.Header, []byte) {
		if h.Name == dimplug.ManifestName {
			data = bytes.Replace(data, []byte(`"version": "1.0.0"`), []byte(`"version": "1.0.1"`), 1)
		}
		return h, data
	})
	if _, err := streamInstall(c, forged, false); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("forged manifest: %v", err)
	}
	// Signed by a key the daemon does not trust.
	otherBytes, _ := os.ReadFile(other)
	if _, err := streamInstall(c, otherBytes, true); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("wrong key: %v", err)
	}
	_, errOut, code, _ = p.ctlRun(nil, "install", "--yes", other)
	if code != 5 || !strings.Contains(errOut, "not trusted") {
		t.Fatalf("wrong key via CLI: exit %d, %s", code, errOut)
	}
	// A wrong pin: refused by the CLI before finishing, and by the daemon.
	signedBytes, _ := os.ReadFile(signed)
	_, errOut, code, _ = p.ctlRun(nil, "install", "--yes", "--sha256", strings.Repeat("ab", 32), signed)
	if code != 5 || !strings.Contains(errOut, "pinned") {
		t.Fatalf("wrong pin via CLI: exit %d, %s", code, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.InstallStream(ctx, bytes.NewReader(signedBytes), host.StreamOptions{SHA256: bytes.Repeat([]byte{1}, 32)}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("wrong pin via API: %v", err)
	}
	waitFor(t, 10*time.Second, "the daemon logs the refusals", func() bool {
		l := p.log.String()
		return strings.Contains(l, "package install failed") && strings.Contains(l, "package refused")
	})
	if list, _ := p.ctl(false, "ls"); strings.Contains(list, "media-badge") {
		t.Fatalf("a refused package was installed:\n%s", list)
	}

	// The good one, with the pin.
	sum := sha256.Sum256(signedBytes)
	out, errOut, code, _ = p.ctlRun(nil, "install", "--yes", "--sha256", hex.EncodeToString(sum[:]), signed)
	if code != 0 {
		t.Fatalf("install signed: exit %d\n%s\n%s\n%s", code, out, errOut, p.log)
	}
	t.Logf("install: %s%s", errOut, out)
	if !strings.Contains(errOut, "is signed by "+f.keyID+" (Example Publisher") || !strings.Contains(out, "signed by "+f.keyID) {
		t.Fatalf("the publisher is not shown:\nstderr: %s\nstdout: %s", errOut, out)
	}
	st := p.waitRunning("media-badge", 0)
	if st.Publisher == nil || st.Publisher.KeyID != f.keyID || st.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("inspect: publisher %+v, sha256 %q", st.Publisher, st.SHA256)
	}
	if out, _ := p.ctl(false, "inspect", "media-badge"); !strings.Contains(out, "Publisher:   "+f.keyID+" (Example Publisher") {
		t.Fatalf("inspect does not show the publisher:\n%s", out)
	}

	p.ctl(false, "trust", "rm", f.keyID)
	if out, _ := p.ctl(false, "trust", "ls", "--json"); strings.Contains(out, f.keyID) {
		t.Fatalf("trust rm left it: %s", out)
	}
	if _, _, code, _ := p.ctlRun(nil, "trust", "rm", f.keyID); code != 3 {
		t.Fatalf("trust rm of an unknown key: exit %d, want 3", code)
	}
}

// TestPackageUnsignedPolicy: an unsigned package under each policy.
func TestPackageUnsignedPolicy(t *testing.T) {
	f := newPackageFixture(t)
	unsigned := f.pack(t, "unsigned.dimplug")
	pkg, _ := os.ReadFile(unsigned)
	for _, tc := range []struct {
		policy       string
		withoutOK    bool // installs without the operator's yes
		withOK       bool // installs with it
		plainDirOK   bool // install <dir> works
		wantRefusal  string
		cliExitNoYes int // dimplugctl install without --yes or a terminal
	}{
		{policy: "refuse", wantRefusal: "refuses unsigned packages", cliExitNoYes: 2},
		{policy: "prompt", withOK: true, plainDirOK: true, wantRefusal: "only when the operator accepts", cliExitNoYes: 2},
		{policy: "allow", withoutOK: true, withOK: true, plainDirOK: true, cliExitNoYes: 2},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			p := newDaemonProc(t)
			p.args = []string{"--unsigned", tc.policy}
			p.start()
			c := dialCtl(t, p)
			_, err := streamInstall(c, pkg, false)
			if tc.withoutOK != (err == nil) {
				t.Fatalf("without allowUnsigned: %v", err)
			}
			if err != nil && (!errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.wantRefusal)) {
				t.Fatalf("refusal: %v", err)
			}
			if err == nil {
				p.ctl(false, "rm", "media-badge")
			}
			if _, errOut, code, _ := p.ctlRun(nil, "install", unsigned); code != tc.cliExitNoYes {
				t.Fatalf("install without --yes: exit %d: %s", code, errOut)
			}
			out, errOut, code, _ := p.ctlRun(nil, "install", "--yes", unsigned)
			if tc.withOK != (code == 0) {
				t.Fatalf("install --yes: exit %d\n%s%s", code, out, errOut)
			}
			if !strings.Contains(errOut, "is NOT signed") {
				t.Fatalf("install does not say the package is unsigned: %s", errOut)
			}
			if code == 0 {
				p.waitRunning("media-badge", 0)
				p.ctl(false, "rm", "media-badge")
			}
			_, errOut, code, _ = p.ctlRun(nil, "install", "--yes", f.dir)
			if tc.plainDirOK != (code == 0) {
				t.Fatalf("install <dir>: exit %d: %s", code, errOut)
			}
		})
	}
}

// hostileCase builds a hostile archive.
type hostileCase struct {
	name string
	pkg  func(t *testing.T) []byte
	want string
}

func tarOf(t *testing.T, compress string, entries ...tarEntry) []byte {
	var buf bytes.Buffer
	var w io.WriteCloser
	switch compress {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "zstd":
		w, _ = zstd.NewWriter(&buf)
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := e.h
		if e.body != nil {
			h.Size = e.size
			if h.Size == 0 {
				h.Size = int64(len(e.body))
			}
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.stream != nil {
			if _, err := io.CopyN(tw, e.stream, h.Size); err != nil {
				t.Fatal(err)
			}
		} else {
			tw.Write(e.body)
		}
	}
	tw.Close()
	w.Close()
	return buf.Bytes()
}

type tarEntry struct {
	h      tar.Header
	body   []byte
	size   int64
	stream io.Reader
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func reg(name string, body []byte) tarEntry {
	return tarEntry{h: tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg}, body: body}
}

// manifestFor is a DIMPLUG-MANIFEST listing files (name → body) and
// extra declared files.
func manifestFor(files map[string][]byte, extra ...dimplug.File) []byte {
	m := dimplug.Manifest{Format: 1, Name: "bad", Version: "1.0.0", Dirs: []string{}}
	for n, b := range files {
		s := sha256.Sum256(b)
		m.Files = append(m.Files, dimplug.File{Path: n, Size: int64(len(b)), Mode: "0644", SHA256: hex.EncodeToString(s[:])})
	}
	m.Files = append(m.Files, extra...)
	b, _ := json.Marshal(m)
	return b
}

// TestPackageHostileArchives: each hostile archive is refused by the
// daemon (policy allow, so that only the archive is at fault) with a clear
// error, as a .dimplug and as a plain tar.gz; the bombs are refused before
// their expansion is written.
func TestPackageHostileArchives(t *testing.T) {
	p := newDaemonProc(t)
	p.args = []string{"--unsigned", "allow"}
	p.start()
	c := dialCtl(t, p)
	toml := []byte("name = \"bad\"\nversion = \"1.0.0\"\nentrypoint = \"bad\"\n")
	man := func(extra ...dimplug.File) tarEntry {
		return reg(dimplug.ManifestName, manifestFor(map[string][]byte{"plugin.toml": toml}, extra...))
	}
	const bomb = 500 << 20
	zeroSum := func() string {
		h := sha256.New()
		io.CopyN(h, zeros{}, bomb)
		return hex.EncodeToString(h.Sum(nil))
	}
	cases := []hostileCase{
		{"traversal", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("plugin.toml", toml), reg("../escape", []byte("x")))
		}, `path leaves the plugin directory`},
		{"absolute", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("/etc/evil", []byte("x")))
		}, "absolute path"},
		{"symlink", func(t *testing.T) []byte {
			return tarOf(t, "zstd", man(), reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}})
		}, "symbolic links are not allowed"},
		{"hardlink", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "hl", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}})
		}, "hard links are not allowed"},
		{"device", func(t *testing.T) []byte {
			return tarOf(t, "zstd", man(), reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}})
		}, "device files are not allowed"},
		{"fifo", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644}})
		}, "named pipes are not allowed"},
		{"duplicate", func(t *testing.T) []byte {
			return tarOf(t, "zstd", man(), reg("plugin.toml", toml), reg("plugin.toml", toml))
		}, "appears twice"},
		{"duplicate-plain", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("plugin.toml", toml), reg("plugin.toml", toml))
		}, "appears twice"},
		{"extra-file", func(t *testing.T) []byte {
			return tarOf(t, "zstd", man(), reg("plugin.toml", toml), reg("smuggled", []byte("x")))
		}, "the manifest does not list"},
		{"missing-file", func(t *testing.T) []byte {
			return tarOf(t, "zstd", man(dimplug.File{Path: "bad", Size: 1, Mode: "0755", SHA256: strings.Repeat("0", 64)}), reg("plugin.toml", toml))
		}, "which the archive does not hold"},
		{"too-many-entries", func(t *testing.T) []byte {
			// Refused on the manifest, before any entry is written.
			var fs []dimplug.File
			for i := range 10001 {
				fs = append(fs, dimplug.File{Path: fmt.Sprintf("f%05d", i), Mode: "0644", SHA256: hex.EncodeToString(make([]byte, 32))})
			}
			return tarOf(t, "zstd", man(fs...), reg("plugin.toml", toml))
		}, "more than the 10000 allowed"},
		{"bomb-dimplug", func(t *testing.T) []byte {
			f := dimplug.File{Path: "zeros", Size: bomb, Mode: "0644", SHA256: zeroSum()}
			return tarOf(t, "zstd", man(f), reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "zeros", Mode: 0o644, Typeflag: tar.TypeReg}, body: []byte{}, size: bomb, stream: zeros{}})
		}, "decompression bomb"},
		{"bomb-targz", func(t *testing.T) []byte {
			return tarOf(t, "gzip", reg("plugin.toml", toml), tarEntry{h: tar.Header{Name: "zeros", Mode: 0o644, Typeflag: tar.TypeReg}, body: []byte{}, size: bomb, stream: zeros{}})
		}, "decompression bomb"},
	}
	pid := p.cmd.Process.Pid
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pkg := tc.pkg(t)
			before := procWritten(t, pid)
			_, err := streamInstall(c, pkg, true)
			written := procWritten(t, pid) - before
			t.Logf("%s: %d bytes packed, daemon wrote %d bytes: %v", tc.name, len(pkg), written, err)
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an invalid error with %q, got %v", tc.want, err)
			}
			if written > 64<<20 {
				t.Fatalf("the daemon wrote %d bytes for a refused %d-byte archive", written, len(pkg))
			}
		})
	}
	if left, _ := os.ReadDir(filepath.Join(p.state, "staging")); len(left) != 0 {
		t.Fatalf("staging not cleaned: %v", left)
	}
}

// TestPackageURLAndStdin: install from a loopback HTTP server (an IP
// literal: no name lookups) and from standard input.
func TestPackageURLAndStdin(t *testing.T) {
	f := newPackageFixture(t)
	signed := f.pack(t, "signed.dimplug", "--sign", filepath.Join(f.work, "pub.key"))
	pkg, _ := os.ReadFile(signed)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cut.dimplug" {
			// The connection drops halfway through the body.
			w.Header().Set("Content-Length", strconv.Itoa(len(pkg)))
			w.Write(pkg[:len(pkg)/2])
			return
		}
		if r.URL.Path != "/media-badge.dimplug" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(pkg)))
		w.Write(pkg)
	}))
	defer srv.Close()
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("the test server is not on a loopback IP literal: %s", srv.URL)
	}
	p := newDaemonProc(t)
	p.start()
	p.ctl(false, "trust", "add", filepath.Join(f.work, "pub.pub"), "--comment", "Example")

	if _, errOut, code, _ := p.ctlRun(nil, "install", "--yes", srv.URL+"/missing.dimplug"); code != 3 || !strings.Contains(errOut, "404") {
		t.Fatalf("404: exit %d: %s", code, errOut)
	}
	// A download cut short fails on both sides, saying why.
	if _, errOut, code, _ := p.ctlRun(nil, "install", "--yes", srv.URL+"/cut.dimplug"); code == 0 || !strings.Contains(errOut, "read the package") || !strings.Contains(errOut, "unexpected EOF") {
		t.Fatalf("cut download: exit %d: %s", code, errOut)
	}
	waitFor(t, 10*time.Second, "the daemon logs the aborted transfer", func() bool {
		return strings.Contains(p.log.String(), "package transfer aborted by the client")
	})
	out, errOut, code, _ := p.ctlRun(nil, "install", "--yes", srv.URL+"/media-badge.dimplug")
	if code != 0 || !strings.Contains(out, "signed by "+f.keyID) {
		t.Fatalf("URL install: exit %d\n%s%s", code, out, errOut)
	}
	p.waitRunning("media-badge", 0)
	p.ctl(false, "rm", "media-badge")

	out, errOut, code, _ = p.ctlRun(bytes.NewReader(pkg), "install", "--yes", "--json", "-")
	if code != 0 {
		t.Fatalf("stdin install: exit %d\n%s%s", code, out, errOut)
	}
	var res host.Installed
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Publisher == nil || res.Publisher.KeyID != f.keyID {
		t.Fatalf("stdin install --json: %v: %s", err, out)
	}
	if sum := sha256.Sum256(pkg); !bytes.Equal(res.SHA256, sum[:]) {
		t.Fatalf("sha256 %x, want %x", res.SHA256, sum)
	}
	p.waitRunning("media-badge", 0)
}

// TestPackageLarge: a 200 MB package (incompressible) installs with
// progress events, and the peak RSS of the CLI and the daemon stays
// bounded: the package is streamed and spooled to disk, never held.
func TestPackageLarge(t *testing.T) {
	f := newPackageFixture(t)
	blob, err := os.Create(filepath.Join(f.dir, "blob.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(blob, rand.Reader, 200<<20); err != nil {
		t.Fatal(err)
	}
	blob.Close()
	pkgPath := f.pack(t, "large.dimplug")
	fi, _ := os.Stat(pkgPath)
	os.Remove(filepath.Join(f.dir, "blob.bin"))

	p := newDaemonProc(t)
	p.start()
	pid := p.cmd.Process.Pid
	daemonBefore := procStatus(t, pid, "VmHWM")
	in, _ := os.Open(pkgPath)
	defer in.Close()
	start := time.Now()
	out, errOut, code, cliRSS := p.ctlRun(nil, "install", "--yes", "--json", pkgPath)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("install: exit %d\n%s\n%s\n%s", code, out, errOut, p.log)
	}
	daemonRSS := procStatus(t, pid, "VmHWM")
	var events, last int64
	var stages []string
	for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
		var ev struct {
			Event, Stage string
			Bytes, Total int64
		}
		if json.Unmarshal([]byte(l), &ev) != nil || ev.Event != "progress" {
			continue
		}
		events++
		if ev.Stage == "sending" {
			last = ev.Bytes
			if ev.Total != fi.Size() {
				t.Fatalf("progress total %d, want %d", ev.Total, fi.Size())
			}
		} else {
			stages = append(stages, ev.Stage)
		}
	}
	t.Logf("%d-byte package installed in %s; %d progress events, daemon stages %v", fi.Size(), took.Round(time.Millisecond), events, stages)
	t.Logf("peak RSS: dimplugctl %.1f MiB, dimplugd %.1f MiB (%.1f MiB before the install)",
		float64(cliRSS)/(1<<20), float64(daemonRSS)/(1<<20), float64(daemonBefore)/(1<<20))
	if events < 3 || last != fi.Size() {
		t.Fatalf("progress: %d events, last at %d of %d bytes:\n%s", events, last, fi.Size(), errOut)
	}
	const bound = 150 << 20
	if cliRSS > bound || daemonRSS > bound {
		t.Fatalf("peak RSS over %d MiB: dimplugctl %d, dimplugd %d", bound>>20, cliRSS, daemonRSS)
	}
	p.waitRunning("media-badge", 0)
}
