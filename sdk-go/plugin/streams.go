package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
)

// FramesFD is where the daemon passes the plugin's frame socket.
const FramesFD = 5

// inlineMax is the largest output frame sent inside a message (see
// host.InlineMax for the measurements).
const inlineMax = 512

// outputPoolSize bounds the shared memory a plugin's new frames use; making
// a frame waits while it is full.
const outputPoolSize = 64 << 20

// Frame is one media frame in a stream (an fMP4 segment, say).
type Frame struct {
	Seq         uint64 // the host's sequence number
	PTS, DTS    int64  // in the stream's timescale
	Duration    int64
	KeyFrame    bool
	ContentType string
	// Data is the frame's bytes. In a received frame it is usually shared
	// memory that only its producer may write: read-only, and valid during
	// the handler call only. Writing into it fails the stream (the handler
	// panics with a fault, which the SDK turns into the stream's error).
	// To change a frame, make a new one (Stream.NewFrame, then copy and
	// edit) or return a Frame whose Data is a slice of your own; returning
	// the received frame itself passes it on without a copy.
	Data []byte

	ref  *frames.Ref  // where Data lives when it is shared memory
	slot *frames.Slot // set by Stream.NewFrame
}

// StreamMeta describes a stream.
type StreamMeta struct {
	MediaID   int64
	Track     string
	Codec     string
	Timescale uint32
	Extra     map[string]string
}

// Stream is the plugin's view of one stream passing through it.
type Stream struct {
	Kind  string // "video/segment", ...
	Stage string // the manifest's stream name
	Role  string // "transform" or "observe"
	Meta  StreamMeta

	fs    *frameServer
	id    uint64
	scope uint64 // the daemon's pool scope: new frames come from its pools
}

// ID identifies the stream among those the plugin instance sees (it is the
// daemon's number for the stream on this plugin's connection).
func (s *Stream) ID() uint64 { return s.id }

// NewFrame returns a frame with n bytes of the plugin's shared memory, for
// a transform that makes new frames: returning it passes it on without a
// copy. It waits while the plugin's pool is full.
func (s *Stream) NewFrame(ctx context.Context, n int) (*Frame, error) {
	slot, err := s.fs.alloc.Alloc(ctx, s.scope, int64(n))
	if err != nil {
		return nil, fmt.Errorf("allocate a %d byte frame: %w", n, err)
	}
	return &Frame{Data: slot.Data, slot: &slot}, nil
}

// FrameFilter transforms the frames of the stream kinds its manifest
// declares with role "transform". It returns the frames to pass on, in
// order: the frame itself (changed in place or not) costs no copy; nil or
// an empty slice drops the frame; several frames split it. Frames of one
// stream arrive one at a time, in order.
type FrameFilter interface {
	FilterFrame(ctx context.Context, s *Stream, f *Frame) ([]*Frame, error)
}

// StreamOpener is told of each new stream before its first frame, on the
// goroutine that then handles the stream's frames. An error fails the
// stream at this stage (by the stage's failure policy).
type StreamOpener interface {
	OpenStream(ctx context.Context, s *Stream) error
}

// StreamCloser is told when a stream has ended, after its last frame: err
// is nil when the stream ran its course, ErrStreamCanceled when the host
// cancelled it or another stage failed it, or the error that ended it here.
type StreamCloser interface {
	CloseStream(ctx context.Context, s *Stream, err error)
}

// ErrStreamCanceled is what StreamCloser hears for a stream that was
// cancelled (by the host, or because another stage failed it).
var ErrStreamCanceled = errors.New("the stream was cancelled")

// errFramesClosed is what StreamCloser hears when the daemon went away.
var errFramesClosed = errors.New("the frame socket closed")

// errRebound is what StreamCloser hears for a stream still open when the
// daemon was upgraded in place.
var errRebound = errors.New("the daemon was upgraded")

// FrameObserver sees the frames of the stream kinds its manifest declares
// with role "observe", after the chain. It cannot change them. A slow
// observer misses frames rather than slowing the stream.
type FrameObserver interface {
	ObserveFrame(ctx context.Context, s *Stream, f *Frame)
}

// frameServer serves the plugin's frame socket. Its reading goroutine and
// one worker per open stream end when the socket closes.
type frameServer struct {
	p     any
	conn  *frames.Conn
	maps  *frames.Mappings
	alloc *frames.Producer
	ready <-chan struct{}  // the handshake and Init are done
	stop  chan struct{}    // closed by close
	lane  func(c net.Conn) // serves a direct hook lane; returns when it ends
	// rebind moves the plugin's control connection to ctl for a daemon
	// upgraded in place (FrameMsg.rebind); it returns once the old one is
	// no longer the plugin's, false if the plugin is stopping.
	rebind func(ctl net.Conn) bool

	flushArmed atomic.Bool // a flushDelay timer is pending

	mu      sync.Mutex
	streams map[uint64]*streamWorker
	lanes   map[net.Conn]struct{} // direct hook lanes being served
	wg      sync.WaitGroup        // lane goroutines
	// streamWG counts stream workers. maps and alloc change only while it
	// is zero (see restart), under the reader goroutine.
	streamWG sync.WaitGroup
}

// streamWorker runs one stream's frames through the handler, in order.
// Its queue does not block the reader (which must go on reading, to see an
// end or a cancel): the daemon bounds what a stage has in flight.
type streamWorker struct {
	s      *Stream
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	queue  []*Frame
	closed bool          // no more frames will come
	why    error         // why, when not a clean end
	wake   chan struct{} // capacity 1: queue grew or closed
}

func (w *streamWorker) push(f *Frame) {
	w.mu.Lock()
	w.queue = append(w.queue, f)
	w.mu.Unlock()
	w.signal()
}

// close ends the queue; why is nil for a clean end.
func (w *streamWorker) close(why error) {
	w.mu.Lock()
	w.closed = true
	if w.why == nil {
		w.why = why
	}
	w.mu.Unlock()
	w.signal()
}

func (w *streamWorker) endReason() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.why
}

func (w *streamWorker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// next returns the next frame and whether more are queued behind it, or
// false once the queue is closed and empty.
func (w *streamWorker) next() (f *Frame, more, ok bool) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			f = w.queue[0]
			w.queue[0] = nil
			w.queue = w.queue[1:]
			more = len(w.queue) > 0
			w.mu.Unlock()
			return f, more, true
		}
		closed := w.closed
		w.mu.Unlock()
		if closed {
			return nil, false, false
		}
		<-w.wake
	}
}

func servesFrames(p any) bool {
	switch p.(type) {
	case FrameFilter, FrameObserver:
		return true
	}
	return false
}

func newFrameServer(p any, c *frames.Conn, ready <-chan struct{}, lane func(net.Conn), rebind func(net.Conn) bool) *frameServer {
	return &frameServer{p: p, conn: c, maps: frames.NewMappings(), alloc: frames.NewProducer(c, outputPoolSize),
		ready: ready, stop: make(chan struct{}), lane: lane, rebind: rebind, streams: map[uint64]*streamWorker{}, lanes: map[net.Conn]struct{}{}}
}

// serve reads packets until the socket closes, then stops every worker.
// Nothing is handled before the plugin's Init has returned.
func (fs *frameServer) serve() {
	select {
	case <-fs.ready:
	case <-fs.stop:
	}
	for {
		msg, fm, fds, err := fs.conn.Recv()
		if err != nil {
			break
		}
		fs.handle(fm, fds)
		msg.Release()
	}
	fs.mu.Lock()
	for id, w := range fs.streams {
		w.cancel()
		w.close(errFramesClosed)
		delete(fs.streams, id)
	}
	for c := range fs.lanes {
		c.Close()
	}
	fs.mu.Unlock()
	fs.wg.Wait()
	fs.streamWG.Wait()
	fs.alloc.Close()
	fs.maps.Close()
}

// restart ends every stream still open and forgets every pool, for a new
// daemon whose pool ids and scopes start over. Reader goroutine only.
func (fs *frameServer) restart() {
	fs.mu.Lock()
	for id, w := range fs.streams {
		w.cancel()
		w.close(errRebound)
		delete(fs.streams, id)
	}
	fs.mu.Unlock()
	fs.streamWG.Wait()
	fs.alloc.Close()
	fs.maps.Close()
	fs.maps, fs.alloc = frames.NewMappings(), frames.NewProducer(fs.conn, outputPoolSize)
}

// serveLane serves a hook lane handed over the frame socket until it
// closes or the plugin stops.
func (fs *frameServer) serveLane(c net.Conn) {
	fs.mu.Lock()
	fs.lanes[c] = struct{}{}
	fs.mu.Unlock()
	fs.wg.Add(1)
	go func() { // ends when the other end closes, or the plugin stops
		defer fs.wg.Done()
		fs.lane(c)
		fs.mu.Lock()
		delete(fs.lanes, c)
		fs.mu.Unlock()
	}()
}

func (fs *frameServer) close() {
	fs.mu.Lock()
	select {
	case <-fs.stop:
	default:
		close(fs.stop)
	}
	fs.mu.Unlock()
	fs.conn.Close()
}

func (fs *frameServer) handle(fm schema.FrameMsg, fds []*os.File) {
	defer func() {
		for _, f := range fds {
			f.Close()
		}
	}()
	switch fm.Which() {
	case schema.FrameMsg_Which_goodbye:
		why, _ := fm.Goodbye()
		fmt.Fprintf(os.Stderr, "dimplug: the daemon closed the frame socket: %s\n", termesc.String(why))
	case schema.FrameMsg_Which_poolAdd:
		pa, err := fm.PoolAdd()
		if err == nil && len(fds) == 1 {
			// Read-only: only a pool's producer writes it. The daemon
			// checked the memfd; a pool that cannot be mapped anyway
			// is said on stderr (the plugin's log), naming the pool:
			// its frames then fail to read, and say so too.
			if err := fs.maps.Add(pa.Owner(), pa.Id(), fds[0], int64(pa.Size())); err != nil {
				fmt.Fprintf(os.Stderr, "dimplug: cannot map pool %d of peer %d (%d bytes): %v\n", pa.Id(), pa.Owner(), pa.Size(), err)
			}
			fds = nil // Add closes it
		}
	case schema.FrameMsg_Which_poolDrop:
		if r, err := fm.PoolDrop(); err == nil {
			_ = fs.maps.Drop(r.Owner(), r.Pool())
		}
	case schema.FrameMsg_Which_open:
		o, err := fm.Open()
		if err != nil {
			return
		}
		fs.open(o)
	case schema.FrameMsg_Which_frame:
		f, err := fm.Frame()
		if err != nil {
			return
		}
		fr, err := fs.received(f)
		fs.mu.Lock()
		w := fs.streams[f.Stream()]
		fs.mu.Unlock()
		if w == nil || err != nil {
			return
		}
		w.push(fr)
	case schema.FrameMsg_Which_release:
		if r, err := fm.Release(); err == nil {
			_ = fs.alloc.Free(r.Pool(), int64(r.Offset()), int64(r.Length()))
		}
	case schema.FrameMsg_Which_lane:
		if len(fds) == 1 {
			if c, err := net.FileConn(fds[0]); err == nil {
				fs.serveLane(c) // a direct lane from a host
			}
		}
	case schema.FrameMsg_Which_rebind:
		fs.rebound(fm, fds)
	case schema.FrameMsg_Which_end:
		e, err := fm.End()
		if err != nil {
			return
		}
		fs.mu.Lock()
		w := fs.streams[e.Stream()]
		delete(fs.streams, e.Stream())
		fs.mu.Unlock()
		if w != nil {
			var why error
			if e.Cancel() {
				why = ErrStreamCanceled
				w.cancel()
			}
			w.close(why) // the worker finishes what is queued
		}
	}
}

// rebound takes the new control socket and lane of a daemon upgraded in
// place (see schema/stream.capnp, Rebind) and answers once the plugin
// serves them.
func (fs *frameServer) rebound(fm schema.FrameMsg, fds []*os.File) {
	r, err := fm.Rebind()
	if err != nil || len(fds) < 1 || len(fds) > 2 || fs.rebind == nil {
		return
	}
	inst, _ := r.Instance()
	ctl, err := net.FileConn(fds[0])
	if err != nil {
		return
	}
	var lane net.Conn
	if len(fds) == 2 {
		if lane, err = net.FileConn(fds[1]); err != nil {
			ctl.Close()
			return
		}
	}
	fs.restart()
	if lane != nil {
		fs.serveLane(lane)
	}
	if !fs.rebind(ctl) {
		return
	}
	_ = fs.conn.Send(func(m schema.FrameMsg) error {
		rb, err := m.NewRebound()
		if err != nil {
			return err
		}
		return rb.SetInstance(inst)
	})
}

func (fs *frameServer) open(o schema.StreamOpen) {
	kind, _ := o.Kind()
	stage, _ := o.Stage()
	role, _ := o.Role()
	s := &Stream{Kind: kind, Stage: stage, Role: role, fs: fs, id: o.Stream(), scope: o.Scope()}
	if m, err := o.Meta(); err == nil {
		s.Meta.MediaID = m.MediaId()
		s.Meta.Track, _ = m.Track()
		s.Meta.Codec, _ = m.Codec()
		s.Meta.Timescale = m.Timescale()
		if l, err := m.Extra(); err == nil && l.Len() > 0 {
			s.Meta.Extra = map[string]string{}
			for i := 0; i < l.Len(); i++ {
				k, _ := l.At(i).Key()
				v, _ := l.At(i).Value()
				s.Meta.Extra[k] = v
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &streamWorker{s: s, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
	fs.mu.Lock()
	fs.streams[s.id] = w
	fs.mu.Unlock()
	fs.streamWG.Add(1)
	fs.alloc.Use(s.scope)
	go func() { // one per stream; ends when the stream ends or the socket closes
		defer fs.streamWG.Done()
		defer cancel()
		defer fs.alloc.Done(s.scope)
		// A handler that writes into a read-only frame faults: with this,
		// the fault is a panic that fails the stream, not a crash.
		debug.SetPanicOnFault(true)
		var failed error // why the stream failed here
		if o, ok := fs.p.(StreamOpener); ok {
			if err := safely("stream opener", func() error { return o.OpenStream(ctx, s) }); err != nil {
				failed = err
				fs.sendEnd(s.id, err.Error())
				w.cancel()
			}
		}
		defer func() {
			// Acknowledge the daemon's end once done with the stream,
			// CloseStream included (deferred first, so it runs last).
			if w.endReason() != errFramesClosed {
				fs.sendEnd(s.id, "")
			}
		}()
		defer func() {
			c, ok := fs.p.(StreamCloser)
			if !ok {
				return
			}
			why := failed
			if why == nil {
				why = w.endReason()
			}
			_ = safely("stream closer", func() error { c.CloseStream(context.Background(), s, why); return nil })
		}()
		for {
			f, more, ok := w.next()
			if !ok {
				return
			}
			if ctx.Err() != nil {
				fs.skip(s, f) // cancelled: answer without work
			} else if err := fs.process(ctx, s, f); err != nil {
				failed = err
				fs.sendEnd(s.id, err.Error())
				w.cancel()
				fs.skip(s, f) // the daemon counts on an answer for every frame
			}
			// Answers wait in the connection's batch while more frames
			// are queued, so that one packet carries many of them, but
			// never longer than flushDelay: the next handler call may
			// be a slow one.
			if !more {
				_ = fs.conn.Flush()
			} else {
				fs.flushSoon()
			}
		}
	}()
}

// skip answers a frame of a cancelled or failed stream without handling
// it: a transform's answer is "dropped", an observer lets go of its hold.
// Either way the daemon may give the frame's memory back to its owner.
func (fs *frameServer) skip(s *Stream, f *Frame) {
	if s.Role == "observe" {
		if f.ref != nil {
			fs.release(f.ref)
		}
		return
	}
	_ = fs.answerDropped(s.id, f.Seq)
}

// received copies a frame message into a Frame viewing shared memory.
func (fs *frameServer) received(f schema.Frame) (*Frame, error) {
	h := frames.ReadHeader(f)
	fr := &Frame{Seq: h.Seq, PTS: h.PTS, DTS: h.DTS, Duration: h.Duration, KeyFrame: h.KeyFrame, ContentType: h.ContentType}
	data, ref, err := frames.ReadData(fs.alloc, fs.maps, f)
	if err != nil {
		return nil, err
	}
	fr.Data = data
	fr.ref = ref
	return fr, nil
}

// process runs one frame through the plugin's handler and answers.
func (fs *frameServer) process(ctx context.Context, s *Stream, in *Frame) error {
	if s.Role == "observe" {
		if o, ok := fs.p.(FrameObserver); ok {
			_ = safely("frame observer", func() error { o.ObserveFrame(ctx, s, in); return nil })
		}
		if in.ref != nil {
			fs.release(in.ref)
		}
		return nil
	}
	ff, ok := fs.p.(FrameFilter)
	if !ok {
		return errors.New("the plugin has no frame filter")
	}
	var outs []*Frame
	if err := safely("frame filter", func() (err error) {
		outs, err = ff.FilterFrame(ctx, s, in)
		return err
	}); err != nil {
		return err
	}
	if len(outs) == 0 { // dropped: the answer ends our hold, nothing passes on
		return fs.answerDropped(s.id, in.Seq)
	}
	for i, out := range outs {
		var ref *frames.Ref
		switch {
		case len(out.Data) == 0:
			if out.slot != nil {
				_ = fs.alloc.Free(out.slot.Pool, out.slot.Off, 0)
				out.slot = nil
			}
		case out == in || (in.ref != nil && sameBytes(out.Data, in.Data)):
			ref = in.ref // passed on: no copy
		case out.slot != nil:
			ref = &frames.Ref{Pool: out.slot.Pool, Offset: uint64(out.slot.Off), Length: uint64(out.slot.Len)}
			out.slot = nil
		case len(out.Data) > inlineMax:
			slot, err := fs.alloc.Alloc(ctx, s.scope, int64(len(out.Data)))
			if err != nil {
				return fmt.Errorf("allocate an output frame: %w", err)
			}
			copy(slot.Data, out.Data)
			ref = &frames.Ref{Pool: slot.Pool, Offset: uint64(slot.Off), Length: uint64(slot.Len)}
		}
		if out.Seq == 0 {
			out.Seq = in.Seq
		}
		if err := fs.send(s.id, in.Seq, uint32(i), uint32(len(outs)), out, ref); err != nil {
			return err
		}
	}
	return nil
}

// answerDropped answers frame seq of stream sid with "dropped": nothing
// passes on, and the daemon's hold on the frame ends.
func (fs *frameServer) answerDropped(sid, seq uint64) error {
	return fs.conn.Buffer(func(m schema.FrameMsg) error {
		fm, err := m.NewFrame()
		if err != nil {
			return err
		}
		fm.SetStream(sid)
		fm.SetSeq(seq)
		fm.SetDropped(true)
		return nil
	})
}

func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}

func (fs *frameServer) send(sid, seq uint64, part, parts uint32, f *Frame, ref *frames.Ref) error {
	h := frames.Header{Seq: seq, PTS: f.PTS, DTS: f.DTS, Duration: f.Duration, KeyFrame: f.KeyFrame, ContentType: f.ContentType}
	if ref == nil {
		return fs.conn.Buffer(frames.FrameMsg(sid, h, part, parts, f.Data, nil))
	}
	return fs.conn.Buffer(frames.FrameMsg(sid, h, part, parts, nil, ref))
}

// flushDelay bounds how long an answer waits in the connection's batch
// for others to join it.
const flushDelay = 200 * time.Microsecond

// flushSoon makes sure the batch is written within flushDelay.
func (fs *frameServer) flushSoon() {
	if fs.flushArmed.CompareAndSwap(false, true) {
		time.AfterFunc(flushDelay, func() {
			fs.flushArmed.Store(false)
			_ = fs.conn.Flush()
		})
	}
}

func (fs *frameServer) release(ref *frames.Ref) { _ = fs.conn.Buffer(frames.ReleaseMsg(*ref)) }

func (fs *frameServer) sendEnd(sid uint64, why string) { _ = fs.conn.SendEnd(sid, why, false) }

// framesFromFD opens the frame socket the daemon passed, if any.
func framesFromFD() *frames.Conn {
	f := os.NewFile(FramesFD, "dimplugd-frames")
	if f == nil {
		return nil
	}
	defer f.Close()
	c, err := frames.FileConn(f)
	if err != nil {
		return nil
	}
	return c
}
