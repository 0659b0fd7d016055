// Package logbuf keeps the recent log of one plugin in memory: its stdout
// and stderr, the structured lines it writes through the Logger capability
// and the daemon's own lines about it. It serves `dimplugctl logs` and
// `logs -f`.
//
// Memory is bounded whatever the plugin writes: a line keeps at most
// Limits.LineBytes bytes of text (the rest is cut and counted in a marker),
// and the buffer keeps at most Limits.Lines lines and Limits.Bytes bytes of
// text, dropping the oldest lines first. Reading a plugin's output never
// buffers more than one line's cap. Followers read from the ring itself, so
// a slow follower costs no memory: it loses the lines that left the ring
// before it read them, and is told how many.
//
// Every line carries its Source, set by the daemon from where the line came
// from (the plugin's stdout pipe, its stderr pipe, its Logger capability, or
// the daemon itself), never parsed from the plugin's text.
package logbuf

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Sources of log lines. Only the daemon writes Daemon lines; a plugin's
// output is Stdout, Stderr or Log whatever its text says.
const (
	Daemon = "daemon" // the daemon's notes about the plugin
	Stdout = "stdout" // the plugin's standard output
	Stderr = "stderr" // the plugin's standard error
	Log    = "log"    // the plugin's Logger capability
)

// Defaults for Limits.
const (
	DefaultLines     = 2000
	DefaultBytes     = 1 << 20 // 1 MiB of text per plugin
	DefaultLineBytes = 8 << 10 // 8 KiB per line
)

// MaxLine is the default cap on one line's text; see Limits.LineBytes.
const MaxLine = DefaultLineBytes

// Limits bound a Buffer. Zero fields take the defaults.
type Limits struct {
	// Lines is how many lines are kept; default DefaultLines.
	Lines int
	// Bytes is how many bytes of text are kept, all lines together;
	// default DefaultBytes. The oldest lines are dropped first; the newest
	// line is always kept.
	Bytes int
	// LineBytes is the longest text a line keeps; default
	// DefaultLineBytes. A longer line keeps its first LineBytes bytes
	// (cut at a UTF-8 boundary) followed by a marker saying how many
	// bytes were cut.
	LineBytes int
}

// WithDefaults returns l with zero (or negative) fields set to the
// defaults.
func (l Limits) WithDefaults() Limits {
	if l.Lines <= 0 {
		l.Lines = DefaultLines
	}
	if l.Bytes <= 0 {
		l.Bytes = DefaultBytes
	}
	if l.LineBytes <= 0 {
		l.LineBytes = DefaultLineBytes
	}
	return l
}

// Line is one log line.
type Line struct {
	Time   time.Time
	Stream string // the source: Daemon, Stdout, Stderr or Log
	Text   string
	// Seq numbers the plugin's lines in the order they were appended,
	// from where Restore left off: it goes on across daemon restarts
	// when the log is restored from its files (see package logstore).
	// Lines may be missing between two numbers, never repeated.
	Seq uint64
}

// Buffer is a bounded ring of lines with live followers. It is safe for
// concurrent use.
type Buffer struct {
	lim Limits

	mu    sync.Mutex
	lines []Line // ring storage
	start int    // index of the oldest line
	n     int    // lines held
	bytes int    // text bytes held
	seq   uint64 // lines ever appended; the newest held line is seq-1
	subs  map[*Subscription]struct{}
	// next is the Seq of the next line appended.
	next uint64
	// sink, when set, receives every appended line, under mu.
	sink func(Line)
}

// New returns a buffer bounded by lim (zero fields: the defaults).
func New(lim Limits) *Buffer {
	lim = lim.WithDefaults()
	return &Buffer{lim: lim, lines: make([]Line, lim.Lines), subs: map[*Subscription]struct{}{}}
}

// Restore fills a new buffer with lines kept from before (oldest first,
// as read back from its files), keeping their times and Seq numbers; the
// next line appended is numbered after the last of them. Lines over the
// buffer's limits are dropped, the oldest first, or cut to the line cap.
// The sink does not see them. Call it before any Append.
func (b *Buffer) Restore(lines []Line) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range lines {
		text, more := cut(l.Text, b.lim.LineBytes, false)
		if more > 0 {
			text += CutMarker(more)
		}
		l.Text = text
		b.putLocked(l)
		b.next = max(b.next, l.Seq+1)
	}
}

// SetSink makes sink receive every line appended from now on, with its
// Seq, in order. It is called with the buffer locked, so it must not
// block nor call the buffer: it is meant to queue the line (see
// logstore.Writer.Add).
func (b *Buffer) SetSink(sink func(Line)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sink = sink
}

// Limits returns the buffer's limits, defaults applied.
func (b *Buffer) Limits() Limits { return b.lim }

// CutMarker is what replaces the end of a line longer than the cap.
func CutMarker(dropped int) string {
	return " [… " + strconv.Itoa(dropped) + " bytes cut]"
}

// cut returns text limited to max bytes without splitting a UTF-8
// character, as a copy that does not keep text's memory alive, plus the
// number of bytes cut. With partial set, text is already a cut prefix of a
// longer line, and an incomplete character at its end is cut too.
func cut(text string, max int, partial bool) (string, int) {
	if len(text) <= max && !partial {
		return text, 0
	}
	n := min(len(text), max)
	// Find the start of the last character kept, at most utf8.UTFMax
	// bytes back; drop it when it does not fit whole.
	for i := n - 1; i >= 0 && i >= n-utf8.UTFMax; i-- {
		if utf8.RuneStart(text[i]) {
			if r, size := utf8.DecodeRuneInString(text[i:]); r != utf8.RuneError || size > 1 {
				if i+size > n {
					n = i
				}
			} else if !utf8.FullRuneInString(text[i:n]) {
				n = i
			}
			break
		}
	}
	return strings.Clone(text[:n]), len(text) - n
}

// Append adds a line from source stream. Text beyond the line cap is cut.
func (b *Buffer) Append(stream, text string) {
	b.AppendCut(stream, text, 0)
}

// AppendCut adds a line of which dropped further bytes were already cut by
// the caller (who read only a prefix of a longer line).
func (b *Buffer) AppendCut(stream, text string, dropped int) {
	text, more := cut(text, b.lim.LineBytes, dropped > 0)
	if dropped += more; dropped > 0 {
		text += CutMarker(dropped)
	}
	l := Line{Time: time.Now(), Stream: stream, Text: text}
	b.mu.Lock()
	defer b.mu.Unlock()
	l.Seq = b.next
	b.next++
	b.putLocked(l)
	if b.sink != nil {
		b.sink(l)
	}
	for s := range b.subs {
		select {
		case s.c <- struct{}{}:
		default: // already signalled
		}
	}
}

// putLocked stores l as the newest line, dropping the oldest ones over the
// limits.
func (b *Buffer) putLocked(l Line) {
	if b.n == len(b.lines) {
		b.dropOldestLocked()
	}
	b.lines[(b.start+b.n)%len(b.lines)] = l
	b.n++
	b.bytes += len(l.Text)
	b.seq++
	for b.bytes > b.lim.Bytes && b.n > 1 {
		b.dropOldestLocked()
	}
}

func (b *Buffer) dropOldestLocked() {
	b.bytes -= len(b.lines[b.start].Text)
	b.lines[b.start] = Line{} // release the text
	b.start = (b.start + 1) % len(b.lines)
	b.n--
}

// Tail returns up to n of the most recent lines, oldest first (n <= 0: all).
func (b *Buffer) Tail(n int) []Line {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tailLocked(n)
}

// TailAndSubscribe returns what Tail(n) returns and a subscription whose
// first line is the one appended right after them: no line is missed or
// repeated between the two.
func (b *Buffer) TailAndSubscribe(n int) ([]Line, *Subscription) {
	s := &Subscription{b: b, c: make(chan struct{}, 1)}
	b.mu.Lock()
	defer b.mu.Unlock()
	s.next = b.seq
	b.subs[s] = struct{}{}
	return b.tailLocked(n), s
}

func (b *Buffer) tailLocked(n int) []Line {
	if n <= 0 || n > b.n {
		n = b.n
	}
	out := make([]Line, n)
	for i := range out {
		out[i] = b.lines[(b.start+b.n-n+i)%len(b.lines)]
	}
	return out
}

// Size returns the number of lines and bytes of text held.
func (b *Buffer) Size() (lines, bytes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.bytes
}

// Subscription follows the lines appended after Subscribe.
type Subscription struct {
	b    *Buffer
	c    chan struct{} // signalled when lines were appended
	next uint64        // seq of the next line to deliver; guarded by b.mu
}

// C is signalled after lines were appended; call Next to read them.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Next returns up to maxLines of the lines not read yet, oldest first,
// holding at most maxBytes of text together (but always at least one line
// when one is waiting), and how many lines left the ring before they could
// be read.
func (s *Subscription) Next(maxLines, maxBytes int) (lines []Line, dropped int) {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	oldest := b.seq - uint64(b.n)
	if s.next < oldest {
		dropped = int(oldest - s.next)
		s.next = oldest
	}
	size := 0
	for s.next < b.seq && len(lines) < maxLines {
		l := b.lines[(b.start+int(s.next-oldest))%len(b.lines)]
		if len(lines) > 0 && size+len(l.Text) > maxBytes {
			break
		}
		size += len(l.Text)
		lines = append(lines, l)
		s.next++
	}
	if s.next < b.seq { // more to read: keep the signal up
		select {
		case s.c <- struct{}{}:
		default:
		}
	}
	return lines, dropped
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	delete(s.b.subs, s)
}

// Subscribe starts following: Next returns the lines appended from now on.
func (b *Buffer) Subscribe() *Subscription {
	s := &Subscription{b: b, c: make(chan struct{}, 1)}
	b.mu.Lock()
	s.next = b.seq
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Copy reads r line by line into the buffer as stream until r ends, then
// closes r. It never holds more than the line cap of one line: the rest of
// a longer line is read and discarded, and counted in the line's marker. A
// trailing "\r" is removed from each line.
func (b *Buffer) Copy(stream string, r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReaderSize(r, b.lim.LineBytes)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// The line is longer than the cap: keep this part, count
			// and discard the rest up to the newline.
			kept := string(line)
			dropped := 0
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				dropped += len(line)
			}
			if err == nil {
				dropped-- // the newline
			}
			b.AppendCut(stream, kept, dropped)
		} else if len(line) > 0 {
			text := line
			if err == nil {
				text = text[:len(text)-1]
			}
			if n := len(text); n > 0 && text[n-1] == '\r' {
				text = text[:n-1]
			}
			b.Append(stream, string(text))
		}
		if err != nil {
			return
		}
	}
}
