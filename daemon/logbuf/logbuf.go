// Package logbuf keeps the recent log of one plugin in memory: its stdout
// and stderr, the structured lines it writes through the Logger capability
// and the daemon's own lines about it. It serves `dimplugctl logs` and
// `logs -f`.
package logbuf

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// MaxLine is the longest line kept; longer lines are split.
const MaxLine = 8 << 10

// Line is one log line.
type Line struct {
	Time   time.Time
	Stream string // "stdout", "stderr", "log" or "daemon"
	Text   string
}

// Buffer is a fixed-size ring of lines with live subscribers. It is safe for
// concurrent use.
type Buffer struct {
	mu    sync.Mutex
	lines []Line // ring storage
	start int    // index of the oldest line
	n     int    // lines held
	subs  map[*Subscription]struct{}
}

// New returns a buffer keeping the last size lines.
func New(size int) *Buffer {
	if size < 1 {
		size = 1
	}
	return &Buffer{lines: make([]Line, size), subs: map[*Subscription]struct{}{}}
}

// Append adds a line and hands it to every subscriber.
func (b *Buffer) Append(stream, text string) {
	l := Line{Time: time.Now(), Stream: stream, Text: text}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n < len(b.lines) {
		b.lines[(b.start+b.n)%len(b.lines)] = l
		b.n++
	} else {
		b.lines[b.start] = l
		b.start = (b.start + 1) % len(b.lines)
	}
	for s := range b.subs {
		select {
		case s.c <- l:
		default:
			s.dropped++
		}
	}
}

// Tail returns up to n of the most recent lines, oldest first (n <= 0: all).
func (b *Buffer) Tail(n int) []Line {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n <= 0 || n > b.n {
		n = b.n
	}
	out := make([]Line, n)
	for i := range out {
		out[i] = b.lines[(b.start+b.n-n+i)%len(b.lines)]
	}
	return out
}

// Subscription receives lines appended after Subscribe.
type Subscription struct {
	b       *Buffer
	c       chan Line
	dropped int // lines not delivered because C was full; guarded by b.mu
}

// C delivers new lines. A subscriber that falls more than 1024 lines behind
// loses lines; Dropped says how many.
func (s *Subscription) C() <-chan Line { return s.c }

// Dropped returns how many lines were not delivered and resets the count.
func (s *Subscription) Dropped() int {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	d := s.dropped
	s.dropped = 0
	return d
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	delete(s.b.subs, s)
}

// Subscribe starts delivering new lines.
func (b *Buffer) Subscribe() *Subscription {
	s := &Subscription{b: b, c: make(chan Line, 1024)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Copy reads r line by line into the buffer as stream until r ends, then
// closes r. Lines longer than MaxLine are split.
func (b *Buffer) Copy(stream string, r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReaderSize(r, MaxLine)
	for {
		line, isPrefix, err := br.ReadLine()
		if len(line) > 0 || (err == nil && !isPrefix) {
			b.Append(stream, string(line))
		}
		if err != nil {
			return
		}
	}
}
