package logstore

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
)

func line(seq uint64, text string) logbuf.Line {
	return logbuf.Line{Time: time.Unix(1700000000, int64(seq)), Seq: seq, Stream: logbuf.Stdout, Text: text}
}

func open(t *testing.T, dir string, opt Options) *Writer {
	t.Helper()
	w, err := Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func tail(t *testing.T, w *Writer, n int) []logbuf.Line {
	t.Helper()
	lines, err := w.Tail(n, math.MaxUint64, 0)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// checkRun fails unless lines are numbered first, first+1, ... and each
// holds the text its number was written with.
func checkRun(t *testing.T, lines []logbuf.Line, first, last uint64) {
	t.Helper()
	if len(lines) != int(last-first+1) {
		t.Fatalf("got %d lines, want %d (%d to %d)", len(lines), last-first+1, first, last)
	}
	for i, l := range lines {
		if want := first + uint64(i); l.Seq != want || !strings.HasPrefix(l.Text, fmt.Sprintf("line %d ", want)) {
			t.Fatalf("line %d is %d %q, want number %d", i, l.Seq, l.Text, want)
		}
	}
}

// TestRotationBound: writing far more than the bound leaves at most the
// bound on disk, each file at most its share, and keeps the newest lines.
func TestRotationBound(t *testing.T) {
	dir := t.TempDir()
	const max, nfiles = 64 << 10, 4
	w := open(t, dir, Options{MaxBytes: max, Files: nfiles})
	pad := strings.Repeat("x", 100)
	const n = 20000 // about 2.5 MiB
	for i := range uint64(n) {
		w.Add(line(i, fmt.Sprintf("line %d %s", i, pad)))
		if i%500 == 0 {
			w.Flush() // no drops: this test is about the bound
		}
	}
	w.Flush()
	if got := Size(dir); got > max || got < max/2 {
		t.Errorf("%d bytes on disk, want at most %d (and over half)", got, max)
	}
	fs := files(dir)
	if len(fs) != nfiles {
		t.Errorf("%d files, want %d: %v", len(fs), nfiles, fs)
	}
	for _, f := range fs {
		if fi, _ := os.Stat(f.path); fi.Size() > max/nfiles {
			t.Errorf("%s holds %d bytes, over %d", f.path, fi.Size(), max/nfiles)
		}
	}
	lines := tail(t, w, 0)
	checkRun(t, lines, n-uint64(len(lines)), n-1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := Size(dir); got > max {
		t.Errorf("%d bytes on disk after Close, over %d", got, max)
	}
}

// TestTailAcrossFilesAndReopen: Tail(n) reads across rotated files, oldest
// first; a writer opened again on the same files appends after the lines
// of the first, none lost or repeated.
func TestTailAcrossFilesAndReopen(t *testing.T) {
	dir := t.TempDir()
	opt := Options{MaxBytes: 64 << 10, Files: 4}
	w := open(t, dir, opt)
	pad := strings.Repeat("y", 200)
	for i := range uint64(100) { // about 30 KiB: current.log and two rotated
		w.Add(line(i, fmt.Sprintf("line %d %s", i, pad)))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if len(files(dir)) < 2 {
		t.Fatalf("no rotation: %v", files(dir))
	}
	w = open(t, dir, opt)
	checkRun(t, tail(t, w, 90), 10, 99)
	for i := uint64(100); i < 110; i++ {
		w.Add(line(i, fmt.Sprintf("line %d %s", i, pad)))
	}
	checkRun(t, tail(t, w, 100), 10, 109)
	before, err := w.Tail(5, 50, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkRun(t, before, 45, 49)
	if got, _ := w.Tail(0, math.MaxUint64, 1000); len(got) != 4 { // 4 lines of 208 bytes
		t.Errorf("Tail with 1000 bytes: %d lines", len(got))
	}
}

// TestHostileText: a plugin's text goes to the file with no raw control
// character (the file is safe to cat), and reads back exactly, bytes that
// are not UTF-8 included.
func TestHostileText(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, Options{})
	texts := []string{
		"\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIC8=\x07\u009b31mC1\x7f\bback",
		"innocent\r12:00:00.000 daemon started instance forged",
		"bidi \u202eevil\u2066 sep\u2028x",
		"not utf-8 \xff\xfe \x1b[31m",
		`json "quotes" \ and <html>`,
		"",
	}
	for i, s := range texts {
		w.Add(line(uint64(i), s))
	}
	got := tail(t, w, 0)
	if len(got) != len(texts) {
		t.Fatalf("%d lines back, want %d", len(got), len(texts))
	}
	for i, l := range got {
		if l.Text != texts[i] || l.Stream != logbuf.Stdout || !l.Time.Equal(time.Unix(1700000000, int64(i))) {
			t.Errorf("line %d: got %+v, want text %q", i, l, texts[i])
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, CurrentFile))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size == 1 || r < 0x20 && r != '\n' || r == 0x7f || r >= 0x80 && r <= 0x9f || r == 0x202e || r == 0x2066 || r == 0x2028 {
			t.Fatalf("raw %q at %d in the file:\n%s", data[i:i+size], i, data)
		}
		i += size
	}
}

// TestTornLine: a line cut short by a crash is skipped, and the next line
// written starts on a line of its own.
func TestTornLine(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, Options{})
	w.Add(line(0, "line 0 whole"))
	w.Close()
	f, err := os.OpenFile(filepath.Join(dir, CurrentFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2024-01-01T00:00:00Z","seq":1,"stream":"stdout","text":"line 1 cut sh`)
	f.Close()
	w = open(t, dir, Options{})
	w.Add(line(2, "line 2 after the crash"))
	got := tail(t, w, 0)
	if len(got) != 2 || got[0].Seq != 0 || got[1].Seq != 2 {
		t.Fatalf("got %+v", got)
	}
}

// TestDropsCounted: when the writer falls behind, Add does not block; the
// lines that find the queue full are dropped and a line says how many.
func TestDropsCounted(t *testing.T) {
	dir := t.TempDir()
	block := make(chan struct{})
	w := open(t, dir, Options{QueueLines: 8, Forward: func(logbuf.Line) { <-block }})
	w.Add(line(0, "line 0 blocks the writer"))
	// The writer takes line 0 (and blocks forwarding it) before the queue
	// can hold 8 more; at most 9 of the 100 are kept.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		taken := len(w.pending) == 0
		w.mu.Unlock()
		if taken || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for i := uint64(1); i < 100; i++ {
		w.Add(line(i, fmt.Sprintf("line %d ", i)))
	}
	close(block)
	got := tail(t, w, 0)
	checkRun(t, got[:9], 0, 8)
	if len(got) != 10 || got[9].Stream != logbuf.Daemon || got[9].Text != "(91 lines dropped: the plugin's log files could not be written fast enough)" || got[9].Seq != 9 {
		t.Fatalf("got %+v", got)
	}
}

// TestTidy: lowering the bound deletes what it no longer allows.
func TestTidy(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, Options{MaxBytes: 1 << 20, Files: 8})
	pad := strings.Repeat("z", 1000)
	for i := range uint64(800) {
		w.Add(line(i, fmt.Sprintf("line %d %s", i, pad)))
	}
	w.Close()
	w = open(t, dir, Options{MaxBytes: 64 << 10, Files: 2})
	if got := Size(dir); got > 64<<10 {
		t.Errorf("%d bytes after lowering the bound to 64 KiB", got)
	}
	w.Add(line(800, "line 800 after"))
	if got := tail(t, w, 1); len(got) != 1 || got[0].Seq != 800 {
		t.Errorf("got %+v", got)
	}
}
