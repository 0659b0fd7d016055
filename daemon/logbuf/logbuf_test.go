package logbuf

import (
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRing(t *testing.T) {
	b := New(Limits{Lines: 3})
	for _, s := range []string{"a", "b", "c", "d"} {
		b.Append(Stdout, s)
	}
	got := b.Tail(0)
	if len(got) != 3 || got[0].Text != "b" || got[2].Text != "d" {
		t.Fatalf("Tail(0) = %+v, want b c d", got)
	}
	if got := b.Tail(1); len(got) != 1 || got[0].Text != "d" {
		t.Fatalf("Tail(1) = %+v, want d", got)
	}
}

func TestDefaults(t *testing.T) {
	l := New(Limits{}).Limits()
	if l.Lines != DefaultLines || l.Bytes != DefaultBytes || l.LineBytes != DefaultLineBytes {
		t.Fatalf("defaults: %+v", l)
	}
}

// TestByteCap: the buffer holds at most Limits.Bytes of text, dropping the
// oldest lines, whatever the line count allows.
func TestByteCap(t *testing.T) {
	b := New(Limits{Lines: 1000, Bytes: 10 << 10, LineBytes: 1 << 10})
	for i := 0; i < 100; i++ {
		b.Append(Stdout, strings.Repeat("x", 1000))
	}
	n, size := b.Size()
	if size > 10<<10 || n != 10 {
		t.Fatalf("held %d lines, %d bytes; want 10 lines within 10 KiB", n, size)
	}
	// One line over the byte cap alone is still kept (cut to its line cap).
	b = New(Limits{Lines: 10, Bytes: 100, LineBytes: 1000})
	b.Append(Stdout, "old")
	b.Append(Stdout, strings.Repeat("y", 500))
	if got := b.Tail(0); len(got) != 1 || len(got[0].Text) != 500 {
		t.Fatalf("got %d lines", len(got))
	}
}

func TestCut(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		max     int
		partial bool
		want    string
		dropped int
	}{
		{"short", "abc", 8, false, "abc", 0},
		{"exact", "abcdefgh", 8, false, "abcdefgh", 0},
		{"long", "abcdefghij", 8, false, "abcdefgh", 2},
		{"no split rune", "abcdefg世界", 8, false, "abcdefg", 6},
		{"rune fits", "abcde世界", 8, false, "abcde世", 3},
		{"partial prefix ends mid rune", "abcdef\xe4\xb8", 8, true, "abcdef", 2},
		{"partial prefix ends whole", "abcdefgh", 8, true, "abcdefgh", 0},
		{"invalid bytes kept", "\xff\xff\xff\xff\xff", 3, false, "\xff\xff\xff", 2},
	}
	for _, tt := range tests {
		got, d := cut(tt.in, tt.max, tt.partial)
		if got != tt.want || d != tt.dropped {
			t.Errorf("%s: cut(%q, %d) = %q, %d; want %q, %d", tt.name, tt.in, tt.max, got, d, tt.want, tt.dropped)
		}
	}
}

func TestFollow(t *testing.T) {
	b := New(Limits{Lines: 4})
	b.Append(Daemon, "before")
	s := b.Subscribe()
	defer s.Close()
	b.Append(Stdout, "one")
	b.Append(Stderr, "two")
	<-s.C()
	lines, dropped := s.Next(10, 1<<20)
	if dropped != 0 || len(lines) != 2 || lines[0].Text != "one" || lines[1].Stream != Stderr {
		t.Fatalf("Next = %+v, %d", lines, dropped)
	}
	// A follower that falls behind loses the lines that left the ring,
	// and is told how many; it costs no memory meanwhile.
	for i := 0; i < 10; i++ {
		b.Append(Log, string(rune('a'+i)))
	}
	<-s.C()
	lines, dropped = s.Next(2, 1<<20)
	if dropped != 6 || len(lines) != 2 || lines[0].Text != "g" {
		t.Fatalf("Next after overflow = %+v, dropped %d", lines, dropped)
	}
	select {
	case <-s.C(): // more waiting: still signalled
	default:
		t.Fatal("not signalled while lines wait")
	}
	lines, _ = s.Next(10, 1) // the byte bound still returns one line
	if len(lines) != 1 || lines[0].Text != "i" {
		t.Fatalf("Next(maxBytes 1) = %+v", lines)
	}
}

func TestCopy(t *testing.T) {
	b := New(Limits{Lines: 10})
	long := strings.Repeat("x", MaxLine+10)
	b.Copy(Stderr, io.NopCloser(strings.NewReader("one\r\ntwo\n"+long+"\nlast-no-newline")))
	want := []string{"one", "two", long[:MaxLine] + CutMarker(10), "last-no-newline"}
	got := b.Tail(0)
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Text != w || got[i].Stream != Stderr {
			t.Fatalf("line %d: got %.40q on %s, want %.40q", i, got[i].Text, got[i].Stream, w)
		}
	}
}

// endless is a reader of one endless line, counting what was read.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	if e.n >= 256<<20 {
		return 0, io.EOF
	}
	for i := range p {
		p[i] = 'z'
	}
	e.n += len(p)
	return len(p), nil
}
func (e *endless) Close() error { return nil }

// TestCopyHugeLine: a 256 MiB line without a newline is read in full with
// no more memory than the line cap: it ends as one cut line.
func TestCopyHugeLine(t *testing.T) {
	b := New(Limits{})
	r := &endless{}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.Copy(Stdout, r)
	runtime.ReadMemStats(&after)
	got := b.Tail(0)
	if len(got) != 1 || !strings.HasSuffix(got[0].Text, CutMarker(256<<20-MaxLine)) || !utf8.ValidString(got[0].Text) {
		t.Fatalf("got %d lines, last ends %q", len(got), got[len(got)-1].Text[max(0, len(got[len(got)-1].Text)-40):])
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("copying a 256 MiB line allocated %d bytes", alloc)
	}
}

func TestLogCapabilityLineCut(t *testing.T) {
	b := New(Limits{LineBytes: 16})
	big := strings.Repeat("é", 100) // 200 bytes
	b.Append(Log, big)
	got := b.Tail(0)[0].Text
	if got != strings.Repeat("é", 8)+CutMarker(184) {
		t.Fatalf("got %q", got)
	}
}

// TestRestoreAndSink: restored lines keep their time and number and are
// not given to the sink; appended lines are numbered after them, given to
// the sink in order, and followers see only them.
func TestRestoreAndSink(t *testing.T) {
	b := New(Limits{Lines: 3})
	old := []Line{
		{Time: time.Unix(1, 0), Stream: Stdout, Text: "a", Seq: 7},
		{Time: time.Unix(2, 0), Stream: Stderr, Text: "b", Seq: 9},
		{Time: time.Unix(3, 0), Stream: Log, Text: "c", Seq: 10},
		{Time: time.Unix(4, 0), Stream: Daemon, Text: "d", Seq: 12},
	}
	b.Restore(old)
	if got := b.Tail(0); len(got) != 3 || got[0] != old[1] || got[2] != old[3] {
		t.Fatalf("restored %+v", got)
	}
	var sunk []Line
	b.SetSink(func(l Line) { sunk = append(sunk, l) })
	_, sub := b.TailAndSubscribe(0)
	defer sub.Close()
	b.Append(Stdout, "e")
	b.Append(Stdout, "f")
	if len(sunk) != 2 || sunk[0].Seq != 13 || sunk[0].Text != "e" || sunk[1].Seq != 14 {
		t.Fatalf("sink got %+v", sunk)
	}
	got, dropped := sub.Next(10, 1<<20)
	if dropped != 0 || len(got) != 2 || got[0].Seq != 13 || got[1].Text != "f" {
		t.Fatalf("follower got %+v, %d dropped", got, dropped)
	}
	if tail := b.Tail(0); len(tail) != 3 || tail[0].Seq != 12 || tail[2].Seq != 14 {
		t.Fatalf("tail %+v", tail)
	}
}
