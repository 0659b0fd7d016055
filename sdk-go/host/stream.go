package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// InlineMax is the largest frame Send puts inside a message rather than in
// shared memory. Messages are batched, so what inline costs is the copies:
// by `make bench`, shared memory is already ahead at 1 KiB (1.4×) and 2.3×
// at 4 KiB, and the two are even at 256 B.
const InlineMax = 512

// DefaultPoolSize bounds the shared memory a session's streams have in
// flight; Send and NewFrame wait when it is full (back-pressure). A frame
// larger than the pool gets a pool of its own.
const DefaultPoolSize = 64 << 20

// StreamMeta describes a stream to the plugins in its chain.
type StreamMeta struct {
	MediaID   int64
	Track     string
	Codec     string
	Timescale uint32
	Extra     map[string]string
}

// Frame is one media frame: an fMP4 segment, an init segment, a subtitle
// file.
type Frame struct {
	Seq         uint64 // the host's sequence number, kept through the chain
	PTS, DTS    int64  // in the stream's timescale
	Duration    int64
	KeyFrame    bool
	ContentType string
	// Data is the frame's bytes. For a received frame (and one from
	// NewFrame, until Send) it is shared memory, valid until Release: the
	// frame holds its mapping, so that neither the daemon dropping the
	// pool nor Session.Close unmaps it under the frame (their unmapping
	// waits for the last Release). A frame never released keeps its
	// memory mapped until the process exits. Using Data after Release
	// (or a NewFrame frame's after Send) is the caller's bug.
	Data []byte

	slot    *frames.Slot // set by NewFrame
	release func()
	final   bool // received: the last answer to a frame sent
}

// Release gives a received frame's memory back (and a NewFrame frame's,
// when it was not sent); Data must not be used afterwards. It is safe to
// call more than once, and after Session.Close (which leaves the memory of
// frames still held mapped until their Release).
func (f *Frame) Release() {
	if f.release != nil {
		f.release()
		f.release = nil
	}
}

// frameClient is a session's frame socket, shared by its streams. Its
// reading goroutine ends when the socket closes.
type frameClient struct {
	s     *Session // takes direct lane grants
	conn  *frames.Conn
	maps  *frames.Mappings
	alloc *frames.Producer

	mu      sync.Mutex
	streams map[uint64]*Stream
	nextID  uint64
	err     error
	goodbye string        // why the daemon closed the socket (FrameMsg.goodbye)
	done    chan struct{} // closed when the reader ends

	// Frames and releases wait in the connection's batch for the flusher
	// goroutine: while it writes one packet, the next fills up.
	flushWake chan struct{} // capacity 1
	flushDone chan struct{} // closed when the flusher ends
}

// dialFrames opens the session's frame socket, tied to the link's session
// by its token (wire.FramesPreamble).
func dialFrames(ctx context.Context, s *Session, socket string, token []byte, poolSize int64) (*frameClient, error) {
	f, err := openFrameSocket(ctx, socket, token)
	if err != nil {
		return nil, err
	}
	conn, err := frames.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	fc := &frameClient{s: s, conn: conn, maps: frames.NewMappings(), alloc: frames.NewProducer(conn, poolSize),
		streams: map[uint64]*Stream{}, done: make(chan struct{}),
		flushWake: make(chan struct{}, 1), flushDone: make(chan struct{})}
	go fc.read()
	go fc.flusher()
	return fc, nil
}

// openFrameSocket asks the daemon on socket for a frame socket of the
// session token names.
func openFrameSocket(ctx context.Context, socket string, token []byte) (*os.File, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
	}
	if _, err := uc.Write(append([]byte(wire.FramesPreamble), token...)); err != nil {
		return nil, err
	}
	buf := make([]byte, 512)
	n, f, err := frames.RecvFD(uc, buf)
	if err != nil {
		return nil, fmt.Errorf("open a frame socket (is the daemon too old for frame streams?): %w", err)
	}
	if f == nil {
		if why := frameRefusal(buf[:n]); why != "" {
			return nil, fmt.Errorf("dimplugd refused a frame socket: %s", why)
		}
		return nil, errors.New("the daemon answered without a frame socket")
	}
	return f, nil
}

// OpenFrameSocket opens one more frame socket of this session and hands it
// over, for a host (or a tool) that speaks schema/stream.capnp itself; the
// session's own streams and direct lanes use a socket of their own. The
// socket is a SOCK_SEQPACKET Unix socket; the daemon closes it when the
// session's connection ends. It counts against the daemon's frame
// sockets per uid.
func (s *Session) OpenFrameSocket(ctx context.Context) (*os.File, error) {
	l := s.link.Load()
	if l == nil {
		return nil, ErrDaemonAway
	}
	return openFrameSocket(ctx, s.socket, l.token)
}

// frameRefusal reads why the daemon refused a frame socket: a 0 byte and
// the reason (the frame hub's caps), or a Cap'n Proto RPC abort (the
// socket's connection caps, answered before the preamble is read).
func frameRefusal(b []byte) string {
	if len(b) > 1 && b[0] == 0 && !bytes.ContainsRune(b[1:], 0) {
		return string(b[1:])
	}
	msg, err := capnp.Unmarshal(b)
	if err != nil {
		return ""
	}
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil || m.Which() != rpccp.Message_Which_abort {
		return ""
	}
	ex, err := m.Abort()
	if err != nil {
		return ""
	}
	why, _ := ex.Reason()
	return why
}

// flusher writes what frames and releases left in the connection's batch;
// it ends after the reader does (the connection closed).
func (fc *frameClient) flusher() {
	defer close(fc.flushDone)
	for {
		select {
		case <-fc.flushWake:
			_ = fc.conn.Flush() // a failed write ends the connection; the reader reports it
		case <-fc.done:
			return
		}
	}
}

// buffer queues a message for the flusher.
func (fc *frameClient) buffer(fill func(schema.FrameMsg) error) error {
	if err := fc.conn.Buffer(fill); err != nil {
		return err
	}
	select {
	case fc.flushWake <- struct{}{}:
	default:
	}
	return nil
}

func (fc *frameClient) close() {
	fc.conn.Close()
	<-fc.done
	<-fc.flushDone
	fc.alloc.Close()
	fc.maps.Close()
}

func (fc *frameClient) read() {
	var err error
	for {
		msg, fm, fds, rerr := fc.conn.Recv()
		if rerr != nil {
			err = rerr
			break
		}
		fc.handle(fm, fds)
		msg.Release()
	}
	fc.mu.Lock()
	why := fc.goodbye
	fc.mu.Unlock()
	switch {
	case why != "":
		err = errdefs.New(errdefs.ErrInvalid, "dimplugd closed the frame socket: "+why)
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		err = ErrStreamCut
	}
	fc.mu.Lock()
	fc.err = err
	streams := fc.streams
	fc.streams = map[uint64]*Stream{}
	fc.mu.Unlock()
	for _, st := range streams {
		st.finish(err)
	}
	close(fc.done)
}

func (fc *frameClient) handle(fm schema.FrameMsg, fds []*os.File) {
	switch fm.Which() {
	case schema.FrameMsg_Which_poolAdd:
		pa, err := fm.PoolAdd()
		if err == nil && len(fds) == 1 {
			_ = fc.maps.Add(pa.Owner(), pa.Id(), fds[0], int64(pa.Size()))
			return
		}
	case schema.FrameMsg_Which_poolDrop:
		if r, err := fm.PoolDrop(); err == nil {
			_ = fc.maps.Drop(r.Owner(), r.Pool())
		}
	case schema.FrameMsg_Which_opened:
		o, err := fm.Opened()
		if err != nil {
			break
		}
		var stages []Stage
		names, _ := o.Stages()
		roles, _ := o.Roles()
		for i := 0; i < names.Len(); i++ {
			name, _ := names.At(i)
			var stg Stage
			stg.Plugin, stg.Name, _ = strings.Cut(name, "/")
			if i < roles.Len() {
				stg.Role, _ = roles.At(i)
			}
			stages = append(stages, stg)
		}
		if st := fc.stream(o.Stream()); st != nil {
			st.openedOnce.Do(func() {
				st.stages, st.scope = stages, o.Scope()
				fc.alloc.Use(st.scope)
				close(st.opened)
			})
		}
	case schema.FrameMsg_Which_frame:
		f, err := fm.Frame()
		if err != nil {
			break
		}
		st := fc.stream(f.Stream())
		final := f.Parts() <= 1 || f.Part()+1 >= f.Parts() // the last answer to one frame sent
		if f.Dropped() {                                   // a stage dropped a frame: only the window hears of it
			if st != nil {
				st.answered()
			}
			break
		}
		fr, err := fc.received(f)
		if err != nil {
			break
		}
		if st != nil {
			st.push(fr, final)
		} else {
			fr.Release()
		}
	case schema.FrameMsg_Which_release:
		if r, err := fm.Release(); err == nil {
			_ = fc.alloc.Free(r.Pool(), int64(r.Offset()), int64(r.Length()))
		}
	case schema.FrameMsg_Which_goodbye:
		why, _ := fm.Goodbye()
		fc.mu.Lock()
		fc.goodbye = termesc.String(why)
		fc.mu.Unlock()
	case schema.FrameMsg_Which_lane:
		if g, err := fm.Lane(); err == nil {
			plugin, _ := g.Plugin()
			why, _ := g.Error()
			var f *os.File
			if len(fds) == 1 {
				f = fds[0]
			}
			fc.s.laneGranted(plugin, why, f)
		}
	case schema.FrameMsg_Which_end:
		e, err := fm.End()
		if err != nil {
			break
		}
		msg, _ := e.Error()
		if st := fc.stream(e.Stream()); st != nil {
			fc.mu.Lock()
			delete(fc.streams, st.id)
			fc.mu.Unlock()
			if msg != "" {
				st.finish(fmt.Errorf("stream failed: %s", msg))
			} else {
				st.finish(io.EOF)
			}
		}
	}
	for _, f := range fds {
		f.Close()
	}
}

func (fc *frameClient) stream(id uint64) *Stream {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.streams[id]
}

// received turns a frame message into a Frame whose Data views shared
// memory (or an inline copy).
func (fc *frameClient) received(f schema.Frame) (*Frame, error) {
	h := frames.ReadHeader(f)
	fr := &Frame{Seq: h.Seq, PTS: h.PTS, DTS: h.DTS, Duration: h.Duration, KeyFrame: h.KeyFrame, ContentType: h.ContentType}
	// The view is held: neither a poolDrop nor Session.Close unmaps it
	// before Release (see Frame).
	data, ref, unhold, err := frames.HoldData(fc.alloc, fc.maps, f)
	if err != nil {
		return nil, err
	}
	fr.Data = data
	switch {
	case ref == nil:
	case f.Returned() && ref.Owner == 0:
		// Our own frame, back with no other holder: free it here.
		fr.release = func() {
			_ = fc.alloc.Free(ref.Pool, int64(ref.Offset), int64(ref.Length))
			unhold()
		}
	default:
		fr.release = func() {
			_ = fc.buffer(frames.ReleaseMsg(*ref))
			unhold()
		}
	}
	return fr, nil
}

// Stream is a host's frame stream through the plugins whose manifests take
// its kind. Send and Recv may be used from different goroutines; frames come
// back in the order they were sent.
type Stream struct {
	fc *frameClient
	id uint64

	opened     chan struct{}
	openedOnce sync.Once
	stages     []Stage
	scope      uint64 // the daemon's pool scope: frames come from its pools

	mu       sync.Mutex
	queue    []*Frame
	ready    chan struct{} // capacity 1: queue grew or the stream ended
	err      error         // set when the stream ended (io.EOF: cleanly)
	sent     bool          // CloseSend was called
	closed   chan struct{}
	inflight int           // frames sent and not answered yet (see Window)
	room     chan struct{} // capacity 1: inflight went below Window
}

// Window is how many frames of a stream may be in the chain: sent, and not
// yet come back or been dropped by a stage. Send waits while it is full, so
// a slow plugin holds the producer back even when frames are small (shared
// memory bounds large ones), frames waiting in Recv's queue are bounded,
// and a Cancel never waits behind more than a window of frames. It matches
// the backlog the daemon allows a stage.
const Window = 1024

// answered frees one place in the window.
func (st *Stream) answered() {
	st.mu.Lock()
	if st.inflight > 0 {
		st.inflight--
	}
	st.mu.Unlock()
	select {
	case st.room <- struct{}{}:
	default:
	}
}

// enter takes a place in the window, waiting while it is full.
func (st *Stream) enter(ctx context.Context) error {
	for {
		st.mu.Lock()
		if st.err != nil {
			err := st.err
			st.mu.Unlock()
			return err
		}
		if st.inflight < Window {
			st.inflight++
			st.mu.Unlock()
			return nil
		}
		st.mu.Unlock()
		select {
		case <-st.room:
		case <-st.closed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// OpenStream opens a frame stream of kind (e.g. "video/segment") through
// the plugins that take it, in order. The first call opens the session's
// frame socket. It fails when the daemon refuses the stream (e.g. a
// fail-closed stage whose plugin is not running); a stream that opened and
// then failed (e.g. a plugin refused it) is returned, and its Recv reports
// the failure.
func (s *Session) OpenStream(ctx context.Context, kind string, meta StreamMeta) (*Stream, error) {
	fc, err := s.frameClient(ctx)
	if err != nil {
		return nil, err
	}
	fc.mu.Lock()
	if fc.err != nil {
		fc.mu.Unlock()
		return nil, fc.err
	}
	fc.nextID++
	st := &Stream{fc: fc, id: fc.nextID, opened: make(chan struct{}), ready: make(chan struct{}, 1), closed: make(chan struct{}),
		room: make(chan struct{}, 1)}
	fc.streams[st.id] = st
	fc.mu.Unlock()
	err = fc.conn.Send(func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		if err != nil {
			return err
		}
		o.SetStream(st.id)
		if err := o.SetKind(kind); err != nil {
			return err
		}
		sm, err := o.NewMeta()
		if err != nil {
			return err
		}
		sm.SetMediaId(meta.MediaID)
		sm.SetTimescale(meta.Timescale)
		if err := sm.SetTrack(meta.Track); err != nil {
			return err
		}
		if err := sm.SetCodec(meta.Codec); err != nil {
			return err
		}
		l, err := sm.NewExtra(int32(len(meta.Extra)))
		if err != nil {
			return err
		}
		i := 0
		for k, v := range meta.Extra {
			if err := l.At(i).SetKey(k); err != nil {
				return err
			}
			if err := l.At(i).SetValue(v); err != nil {
				return err
			}
			i++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open %s stream: %w", kind, err)
	}
	// The reader handles the daemon's messages in order: it closes opened
	// (the chain is built) before closed (the stream ended), and never
	// closes opened after closed. So when closed is seen, opened tells
	// for certain whether the daemon opened the stream first: a stream it
	// refused fails here; one that opened and then failed (a plugin
	// refused it, say) is returned, and Recv reports why.
	select {
	case <-st.opened:
		return st, nil
	case <-st.closed:
		select {
		case <-st.opened:
			return st, nil
		default:
		}
		return nil, fmt.Errorf("open %s stream: %w", kind, st.err)
	case <-ctx.Done():
		st.Cancel()
		return nil, ctx.Err()
	}
}

// ErrStreamCut ends the streams that were open when the daemon went away
// (a restart, an upgrade, a crash): their frames are lost. Open new streams
// once the session is connected again (OpenStream says ErrDaemonAway until
// then).
var ErrStreamCut = errors.New("dimplugd went away: the stream was cut off (open a new one once the daemon is back)")

// frameClient returns the session's frame socket to the current daemon,
// opening one when there is none or the last one ended with its daemon.
func (s *Session) frameClient(ctx context.Context) (*frameClient, error) {
	l := s.link.Load()
	if l == nil {
		return nil, ErrDaemonAway
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fc := s.frames; fc != nil {
		select {
		case <-fc.done: // its daemon went away
			s.frames = nil
			go fc.close() // owned by nobody else now; ends at once
		default:
			return fc, nil
		}
	}
	fc, err := dialFrames(ctx, s, s.socket, l.token, DefaultPoolSize)
	if err != nil {
		return nil, err
	}
	s.frames = fc
	return fc, nil
}

// Stage is one plugin's part in a stream's chain.
type Stage struct {
	Plugin string
	Name   string // the stage's name in the plugin's manifest
	Role   string // "transform" or "observe"
}

// String is "plugin/stage".
func (s Stage) String() string { return s.Plugin + "/" + s.Name }

// Chain lists the stream's stages: transforms in order, then observers.
func (st *Stream) Chain() []Stage { return st.stages }

// Stages lists the chain as "plugin/stage", transforms in order, then
// observers.
func (st *Stream) Stages() []string {
	out := make([]string, len(st.stages))
	for i, s := range st.stages {
		out[i] = s.String()
	}
	return out
}

// NewFrame returns a frame whose Data is n bytes of shared memory, for a
// producer to fill in place and Send: the bytes are never copied again. It
// waits while the session's pool is full.
func (st *Stream) NewFrame(ctx context.Context, n int) (*Frame, error) {
	slot, err := st.fc.alloc.Alloc(ctx, st.scope, int64(n))
	if err != nil {
		return nil, fmt.Errorf("allocate a %d byte frame: %w", n, err)
	}
	f := &Frame{Data: slot.Data, slot: &slot}
	if slot.Len > 0 {
		// Held until Send or Release: Session.Close does not unmap it
		// under the producer filling it.
		_, unhold, err := st.fc.alloc.Hold(slot.Pool, uint64(slot.Off), uint64(slot.Len))
		if err != nil {
			_ = st.fc.alloc.Free(slot.Pool, slot.Off, slot.Len)
			return nil, fmt.Errorf("allocate a %d byte frame: %w", n, err)
		}
		f.release = func() {
			if s := f.slot; s != nil { // never sent: its slot is free again
				f.slot = nil
				_ = st.fc.alloc.Free(s.Pool, s.Off, s.Len)
			}
			unhold()
		}
	}
	return f, nil
}

// Send sends a frame down the chain. A frame from NewFrame travels as a
// descriptor; other small frames inline; other large ones are copied into
// shared memory first (waiting while the pool is full). It waits while the
// stream's Window is full. The caller may reuse f once Send returns.
func (st *Stream) Send(ctx context.Context, f *Frame) error {
	if err := st.enter(ctx); err != nil {
		return err
	}
	err := st.send(ctx, f)
	if err != nil {
		st.answered()
	}
	return err
}

func (st *Stream) send(ctx context.Context, f *Frame) error {
	slot := f.slot
	if slot != nil && slot.Len == 0 { // nothing to share: an empty frame travels inline
		_ = st.fc.alloc.Free(slot.Pool, slot.Off, 0)
		slot = nil
	}
	if slot == nil && len(f.Data) > InlineMax {
		s, err := st.fc.alloc.Alloc(ctx, st.scope, int64(len(f.Data)))
		if err != nil {
			return fmt.Errorf("allocate a %d byte frame: %w", len(f.Data), err)
		}
		copy(s.Data, f.Data)
		slot = &s
	}
	if f.slot != nil {
		// A frame from NewFrame is the chain's now: no longer held (nor
		// to be freed by Release).
		f.slot = nil
		defer f.Release()
	}
	h := frames.Header{Seq: f.Seq, PTS: f.PTS, DTS: f.DTS, Duration: f.Duration, KeyFrame: f.KeyFrame, ContentType: f.ContentType}
	if slot == nil {
		return st.fc.buffer(frames.FrameMsg(st.id, h, 0, 1, f.Data, nil))
	}
	return st.fc.buffer(frames.FrameMsg(st.id, h, 0, 1, nil, &frames.Ref{Pool: slot.Pool, Offset: uint64(slot.Off), Length: uint64(slot.Len)}))
}

func (st *Stream) push(f *Frame, final bool) {
	f.final = final
	st.mu.Lock()
	st.queue = append(st.queue, f)
	st.mu.Unlock()
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

func (st *Stream) finish(err error) {
	st.mu.Lock()
	first := st.err == nil
	if first {
		st.err = err
		close(st.closed)
	}
	st.mu.Unlock()
	if first {
		// Once opened, the stream used its scope's pools; it no longer
		// does (they go once their frames are all back).
		st.openedOnce.Do(func() {})
		if st.scope != 0 {
			st.fc.alloc.Done(st.scope)
		}
	}
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

// Recv returns the next frame out of the chain, in order. It returns io.EOF
// after the last frame of a stream whose input was closed with CloseSend,
// and an error naming the plugin when a stage failed the stream. Release
// each frame when done with it.
func (st *Stream) Recv(ctx context.Context) (*Frame, error) {
	for {
		st.mu.Lock()
		if len(st.queue) > 0 {
			f := st.queue[0]
			st.queue[0] = nil
			st.queue = st.queue[1:]
			st.mu.Unlock()
			if f.final {
				st.answered() // its place in the window is free once received
			}
			return f, nil
		}
		err := st.err
		st.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-st.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// CloseSend says no more frames will be sent; Recv returns io.EOF once the
// chain has passed on everything.
func (st *Stream) CloseSend() error {
	return st.sendEnd(false)
}

// Cancel abandons the stream: frames in flight are dropped.
func (st *Stream) Cancel() error {
	st.finish(context.Canceled) // first: the daemon's answer must not win
	st.fc.mu.Lock()
	delete(st.fc.streams, st.id)
	st.fc.mu.Unlock()
	err := st.sendEnd(true)
	st.mu.Lock()
	q := st.queue
	st.queue = nil
	st.mu.Unlock()
	for _, f := range q {
		f.Release()
	}
	return err
}

func (st *Stream) sendEnd(cancel bool) error { return st.fc.conn.SendEnd(st.id, "", cancel) }
