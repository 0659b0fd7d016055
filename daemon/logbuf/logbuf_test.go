package logbuf

import (
	"io"
	"strings"
	"testing"
)

func TestRing(t *testing.T) {
	b := New(3)
	for _, s := range []string{"a", "b", "c", "d"} {
		b.Append("stdout", s)
	}
	got := b.Tail(0)
	if len(got) != 3 || got[0].Text != "b" || got[2].Text != "d" {
		t.Fatalf("Tail(0) = %+v, want b c d", got)
	}
	if got := b.Tail(1); len(got) != 1 || got[0].Text != "d" {
		t.Fatalf("Tail(1) = %+v, want d", got)
	}
}

func TestSubscribeAndCopy(t *testing.T) {
	b := New(10)
	s := b.Subscribe()
	defer s.Close()
	long := strings.Repeat("x", MaxLine+10)
	b.Copy("stderr", io.NopCloser(strings.NewReader("one\ntwo\n"+long+"\nlast-no-newline")))
	want := []string{"one", "two", long[:MaxLine], long[MaxLine:], "last-no-newline"}
	for _, w := range want {
		l := <-s.C()
		if l.Text != w || l.Stream != "stderr" {
			t.Fatalf("got %q on %s, want %q", l.Text, l.Stream, w)
		}
	}
	if d := s.Dropped(); d != 0 {
		t.Fatalf("dropped %d", d)
	}
}
