// Package logstore keeps a plugin's log on disk, so that it outlives the
// daemon: the lines of its logbuf.Buffer are written, in order, to
// <dir>/current.log, which is rotated by size to current.log.1,
// current.log.2 and so on. The files of one plugin hold at most
// Options.MaxBytes bytes together, whatever the plugin writes: the oldest
// file is deleted (overwritten by a rename) when current.log is rotated.
//
// Each line of a file is one JSON object (see Record), made terminal-safe
// with termesc.JSON, so that `cat` or `tail -f` of a file prints no escape
// sequence of the plugin's, while decoding it gives back the plugin's text
// exactly as the daemon kept it.
//
// Writing never blocks the caller: Add queues the line for the writer
// goroutine, up to Options.QueueBytes of text; lines that find the queue
// full are dropped, and a line "(N lines dropped: ...)" takes their place
// in the file. The files are written (to the kernel) as soon as the queue
// empties and synced to disk at each rotation and at Close: a daemon that
// is killed loses at most the lines still queued; a machine that crashes,
// what the kernel had not written back yet.
//
// Lumberjack (gopkg.in/natefinch/lumberjack.v2) was not used: it sizes
// files in whole megabytes, deletes old files from a background goroutine
// (so the bound holds only eventually), refuses a write larger than a
// file, and has no reader; the rotation here is a few renames.
package logstore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
)

// CurrentFile is the name of the file being written; the rotated ones are
// CurrentFile.1 (the newest) to CurrentFile.<Files-1> (the oldest).
const CurrentFile = "current.log"

// Defaults for Options.
const (
	DefaultMaxBytes   = 8 << 20 // all of a plugin's files together
	DefaultFiles      = 4       // current.log and 3 rotated files
	DefaultQueueBytes = 1 << 20 // text waiting for the disk
	DefaultQueueLines = 8192

	// MinMaxBytes is the smallest MaxBytes accepted, and MinFileBytes the
	// smallest share of it a file gets: a file holds a few lines cut to
	// the usual line cap.
	MinMaxBytes  = 64 << 10
	MinFileBytes = 16 << 10
)

// Options bound a plugin's files. Zero fields take the defaults.
type Options struct {
	// MaxBytes bounds the bytes of all the plugin's files together;
	// default DefaultMaxBytes, at least MinMaxBytes.
	MaxBytes int64
	// Files is how many files share MaxBytes: current.log and Files-1
	// rotated ones, each at most MaxBytes/Files; default DefaultFiles, at
	// least 2, and at most MaxBytes/MinFileBytes.
	Files int
	// QueueBytes and QueueLines bound the lines waiting for the disk;
	// defaults DefaultQueueBytes and DefaultQueueLines.
	QueueBytes int
	QueueLines int
	// Forward, when set, is given every line after it was written, from
	// the writer goroutine (a slow Forward makes lines queue, then drop).
	Forward func(logbuf.Line)
	// OnError is told about a failure to write or rotate, once until
	// writing works again; default: ignored.
	OnError func(error)
}

// WithDefaults returns o with zero (or too small) fields set.
func (o Options) WithDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	o.MaxBytes = max(o.MaxBytes, MinMaxBytes)
	if o.Files <= 0 {
		o.Files = DefaultFiles
	}
	o.Files = max(min(o.Files, int(o.MaxBytes/MinFileBytes)), 2)
	if o.QueueBytes <= 0 {
		o.QueueBytes = DefaultQueueBytes
	}
	if o.QueueLines <= 0 {
		o.QueueLines = DefaultQueueLines
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	return o
}

// Record is one line of a file.
type Record struct {
	Time   time.Time `json:"time"`
	Seq    uint64    `json:"seq"`
	Stream string    `json:"stream"` // daemon, stdout, stderr or log
	// Text is the line's text when it is valid UTF-8, else Raw holds it
	// (base64 in the file): JSON strings cannot carry bytes that are not
	// UTF-8, and the text is kept exactly.
	Text string `json:"text,omitempty"`
	Raw  []byte `json:"raw,omitempty"`
}

func recordOf(l logbuf.Line) Record {
	r := Record{Time: l.Time, Seq: l.Seq, Stream: l.Stream}
	if utf8.ValidString(l.Text) {
		r.Text = l.Text
	} else {
		r.Raw = []byte(l.Text)
	}
	return r
}

// Line returns the log line r holds.
func (r Record) Line() logbuf.Line {
	text := r.Text
	if r.Raw != nil {
		text = string(r.Raw)
	}
	return logbuf.Line{Time: r.Time, Seq: r.Seq, Stream: r.Stream, Text: text}
}

// Writer writes one plugin's lines to its directory. Its methods are safe
// for concurrent use.
type Writer struct {
	dir     string
	opt     Options
	fileMax int64 // bytes per file

	mu        sync.Mutex
	pending   []logbuf.Line // queued for the writer goroutine
	pendBytes int
	dropped   int    // lines dropped since the last note
	dropFirst uint64 // Seq of the first of them
	closed    bool

	wake    chan struct{}      // capacity 1: lines were queued
	flushes chan chan struct{} // Flush requests
	done    chan struct{}      // closed when the writer goroutine ends

	// rot is held while the files are renamed and while they are read,
	// so a reader never sees a line twice or misses a file.
	rot sync.Mutex
	// Owned by the writer goroutine (and Open).
	f      *os.File
	bw     *bufio.Writer
	size   int64 // bytes in current.log
	enc    bytes.Buffer
	failed bool // the last write or rotation failed (reported)
}

// Open opens the plugin's log files in dir (made if missing) for
// appending and starts the writer goroutine; Close stops it.
func Open(dir string, opt Options) (*Writer, error) {
	opt = opt.WithDefaults()
	w := &Writer{
		dir:     dir,
		opt:     opt,
		fileMax: opt.MaxBytes / int64(opt.Files),
		wake:    make(chan struct{}, 1),
		flushes: make(chan chan struct{}),
		done:    make(chan struct{}),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("plugin log: %w", err)
	}
	w.tidy()
	if err := w.openCurrent(); err != nil {
		return nil, err
	}
	go w.run()
	return w, nil
}

func (w *Writer) path(i int) string {
	if i == 0 {
		return filepath.Join(w.dir, CurrentFile)
	}
	return filepath.Join(w.dir, CurrentFile+"."+strconv.Itoa(i))
}

// tidy deletes what the bound no longer allows, after the options were
// lowered: rotated files beyond Files-1 and rotated files over the size of
// a file.
func (w *Writer) tidy() {
	for _, f := range files(w.dir) {
		if f.index == 0 {
			continue
		}
		if fi, err := os.Stat(f.path); f.index >= w.opt.Files || err == nil && fi.Size() > w.fileMax {
			_ = os.Remove(f.path)
		}
	}
}

// openCurrent opens current.log for appending. A last line cut short by a
// crash is ended, so that the next line starts on a line of its own; a
// file over the size of a file (the bound was lowered) keeps only its
// newest lines that fit.
func (w *Writer) openCurrent() error {
	if fi, err := os.Stat(w.path(0)); err == nil && fi.Size() > w.fileMax {
		if err := w.shrinkCurrent(fi.Size()); err != nil {
			return fmt.Errorf("plugin log: %w", err)
		}
	}
	f, err := os.OpenFile(w.path(0), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("plugin log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("plugin log: %w", err)
	}
	w.f, w.size = f, fi.Size()
	w.bw = bufio.NewWriterSize(f, 64<<10)
	if w.size > 0 {
		last := make([]byte, 1)
		if r, err := os.Open(w.path(0)); err == nil {
			_, err = r.ReadAt(last, w.size-1)
			r.Close()
			if err == nil && last[0] != '\n' {
				w.bw.WriteByte('\n')
				w.size++
			}
		}
	}
	return nil
}

// shrinkCurrent replaces current.log, of size bytes, by its last lines
// that fit in a file.
func (w *Writer) shrinkCurrent(size int64) error {
	r, err := os.Open(w.path(0))
	if err != nil {
		return err
	}
	data := make([]byte, w.fileMax-1) // room for an ending newline
	_, err = r.ReadAt(data, size-int64(len(data)))
	r.Close()
	if err != nil {
		return err
	}
	data = data[bytes.IndexByte(data, '\n')+1:] // from the first whole line
	tmp := w.path(0) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, w.path(0))
}

// Add queues l for writing. It never blocks: when the queue is full, the
// line is dropped and counted.
func (w *Writer) Add(l logbuf.Line) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if len(w.pending) >= w.opt.QueueLines || w.pendBytes+len(l.Text) > w.opt.QueueBytes {
		if w.dropped == 0 {
			w.dropFirst = l.Seq
		}
		w.dropped++
		return
	}
	w.pending = append(w.pending, l)
	w.pendBytes += len(l.Text)
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Flush returns once every line added before it is written to the files
// (not necessarily synced to disk).
func (w *Writer) Flush() {
	ack := make(chan struct{})
	select {
	case w.flushes <- ack:
		<-ack
	case <-w.done:
	}
}

// Close writes the queued lines, syncs the files and stops the writer.
// Lines added after Close are ignored.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.wake)
	<-w.done
	err := w.bw.Flush()
	if serr := w.f.Sync(); err == nil {
		err = serr
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// run is the writer goroutine.
func (w *Writer) run() {
	defer close(w.done)
	for {
		var acks []chan struct{}
		select {
		case _, ok := <-w.wake:
			if !ok {
				w.writeQueued()
				return
			}
		case ack := <-w.flushes:
			acks = append(acks, ack)
		}
		w.writeQueued()
		w.check(w.bw.Flush())
		for _, ack := range acks {
			close(ack)
		}
	}
}

// writeQueued writes the lines queued so far, then the note about the
// lines dropped after them.
func (w *Writer) writeQueued() {
	w.mu.Lock()
	batch := w.pending
	dropped, first := w.dropped, w.dropFirst
	w.pending, w.pendBytes, w.dropped = nil, 0, 0
	w.mu.Unlock()
	for _, l := range batch {
		w.write(l)
	}
	if dropped > 0 {
		w.write(logbuf.Line{Time: time.Now(), Seq: first, Stream: logbuf.Daemon,
			Text: fmt.Sprintf("(%d lines dropped: the plugin's log files could not be written fast enough)", dropped)})
	}
}

// write appends one line, rotating first when it would not fit.
func (w *Writer) write(l logbuf.Line) {
	b := w.encode(l)
	for int64(len(b)) > w.fileMax && len(l.Text) > 64 {
		// Only with a small MaxBytes and a large line cap: cut the text
		// until the line fits in a file, so the bound holds.
		keep := len(l.Text) / 2
		for keep > 0 && !utf8.RuneStart(l.Text[keep]) {
			keep--
		}
		l.Text = l.Text[:keep] + logbuf.CutMarker(len(l.Text)-keep)
		b = w.encode(l)
	}
	if w.size > 0 && w.size+int64(len(b)) > w.fileMax {
		if err := w.rotate(); err != nil {
			w.check(err)
			return
		}
	}
	n, err := w.bw.Write(b)
	w.size += int64(n)
	w.check(err)
	if w.opt.Forward != nil {
		w.opt.Forward(l)
	}
}

// encode returns l as a file line: JSON, terminal-safe, ending in "\n".
func (w *Writer) encode(l logbuf.Line) []byte {
	w.enc.Reset()
	e := json.NewEncoder(&w.enc)
	e.SetEscapeHTML(false)
	if err := e.Encode(recordOf(l)); err != nil {
		return nil // a Record always encodes
	}
	return termesc.JSON(w.enc.Bytes())
}

// rotate makes current.log the newest rotated file, dropping the oldest,
// and starts an empty current.log. The files are synced first, so a crash
// never leaves a rotated file shorter than it was.
func (w *Writer) rotate() error {
	w.rot.Lock()
	defer w.rot.Unlock()
	err := w.bw.Flush()
	if err == nil {
		err = w.f.Sync()
	}
	w.f.Close()
	for i := w.opt.Files - 1; i >= 1; i-- {
		if rerr := os.Rename(w.path(i-1), w.path(i)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	f, oerr := os.OpenFile(w.path(0), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if oerr != nil {
		// Keep a writer that fails, and try again at the next line.
		f, _ = os.Open(os.DevNull)
		err = errors.Join(err, oerr)
	}
	w.f, w.size = f, 0
	w.bw.Reset(f)
	if d, derr := os.Open(w.dir); derr == nil {
		_ = d.Sync() // the renames
		d.Close()
	}
	if err != nil {
		return fmt.Errorf("rotate the plugin log in %s: %w", w.dir, err)
	}
	return nil
}

// check reports err once until writing works again. A failed buffered
// write leaves the buffer failed; it is reset to carry on with the next
// lines.
func (w *Writer) check(err error) {
	if err == nil {
		w.failed = false
		return
	}
	w.bw.Reset(w.f)
	if !w.failed {
		w.failed = true
		w.opt.OnError(err)
	}
}

// Tail returns up to n of the newest lines in the files (n <= 0: all) whose
// Seq is below before (math.MaxUint64: any), oldest first, holding at most
// maxBytes of text together (maxBytes <= 0: no bound). Lines that do not
// decode (a line cut short by a crash) are skipped. It flushes the queue
// first, so it sees every line added before it.
func (w *Writer) Tail(n int, before uint64, maxBytes int) ([]logbuf.Line, error) {
	w.Flush()
	w.rot.Lock()
	defer w.rot.Unlock()
	return Tail(w.dir, n, before, maxBytes)
}

type file struct {
	path  string
	index int // 0 for current.log, i for current.log.i
}

// files lists the log files in dir, newest first.
func files(dir string) []file {
	entries, _ := os.ReadDir(dir)
	var fs []file
	for _, e := range entries {
		name := e.Name()
		if name == CurrentFile {
			fs = append(fs, file{filepath.Join(dir, name), 0})
			continue
		}
		if s, ok := strings.CutPrefix(name, CurrentFile+"."); ok {
			if i, err := strconv.Atoi(s); err == nil && i > 0 && strconv.Itoa(i) == s {
				fs = append(fs, file{filepath.Join(dir, name), i})
			}
		}
	}
	slices.SortFunc(fs, func(a, b file) int { return a.index - b.index })
	return fs
}

// Tail is Writer.Tail for a directory no writer has open.
func Tail(dir string, n int, before uint64, maxBytes int) ([]logbuf.Line, error) {
	var rev []logbuf.Line // newest first
	size := 0
	stop := false // maxBytes reached
	full := func() bool { return stop || n > 0 && len(rev) >= n }
	for _, f := range files(dir) {
		if full() {
			break
		}
		data, err := os.ReadFile(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read the plugin log: %w", err)
		}
		for end := len(data); end > 0 && !full(); {
			start := bytes.LastIndexByte(data[:end-1], '\n') + 1
			raw := data[start:end]
			end = start
			var r Record
			if json.Unmarshal(raw, &r) != nil || r.Stream == "" {
				continue
			}
			if r.Seq >= before {
				continue
			}
			l := r.Line()
			if maxBytes > 0 && size+len(l.Text) > maxBytes {
				stop = true
				break
			}
			size += len(l.Text)
			rev = append(rev, l)
		}
	}
	slices.Reverse(rev)
	return rev, nil
}

// Size returns the bytes of the log files in dir together.
func Size(dir string) int64 {
	var total int64
	for _, f := range files(dir) {
		if fi, err := os.Stat(f.path); err == nil {
			total += fi.Size()
		}
	}
	return total
}
