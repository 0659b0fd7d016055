package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// The preambles that open a host's other connections on the daemon's host
// socket, each followed by the TokenLen bytes of the session token openHost
// returned (schema/daemon.capnp): the hook lane (schema/lane.capnp) and the
// frame socket (schema/stream.capnp). The daemon answers the lane's with
// PreambleOK, or PreambleRefused and why (text, until it closes the
// connection); the frame socket's the same way, PreambleOK carrying the
// socket's file descriptor. The digit is the preamble's version: a daemon
// refuses one it does not speak, naming those it does.
const (
	LanePreamble   = "DPLANE2\n"
	FramesPreamble = "DPFRAME2\n"
	TokenLen       = 16

	PreambleOK      byte = 1
	PreambleRefused byte = 0
)

// LanePreambleWithToken is what a host writes to open its hook lane.
func LanePreambleWithToken(token []byte) []byte {
	return append([]byte(LanePreamble), token...)
}

// A lane's peer may have at most MaxLaneCallsInFlight calls, holding at
// most MaxLaneBytesInFlight bytes of requests, in flight: past either, the
// serving side reads nothing more (cancel frames included) until a call
// ends. Calls end by their deadlines at the latest, so the wait is bounded.
const (
	MaxLaneCallsInFlight = 1024
	MaxLaneBytesInFlight = 256 << 20
)

// workers run a lane's requests. A worker stays for the next request after
// one ends (for workerIdle), so that its stack, which decoding a request
// grows, is grown once rather than for every call: a goroutine per request
// cost about a quarter of a plugin's instructions per hook call in stack
// copies (callgrind, make bench-callgrind). There are as many workers as
// requests in flight at the busiest moment, bounded by
// MaxLaneCallsInFlight.
type workers struct {
	jobs chan func()
	quit chan struct{}
	wg   sync.WaitGroup
}

// workerIdle is how long an idle worker waits for another request.
const workerIdle = 10 * time.Second

func newWorkers() *workers {
	return &workers{jobs: make(chan func()), quit: make(chan struct{})}
}

// run hands job to an idle worker, or starts one.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
		return
	default:
	}
	w.wg.Add(1)
	go func() { // a worker; ends when idle for workerIdle or at stop
		defer w.wg.Done()
		job()
		t := time.NewTimer(workerIdle)
		defer t.Stop()
		for {
			select {
			case job := <-w.jobs:
				job()
				t.Reset(workerIdle)
			case <-t.C:
				return
			case <-w.quit:
				return
			}
		}
	}()
}

// stop ends the workers once they are idle, and waits for them. No run
// may follow.
func (w *workers) stop() {
	close(w.quit)
	w.wg.Wait()
}

// callLimit counts calls in flight and their bytes.
type callLimit struct {
	mu             sync.Mutex
	cond           sync.Cond
	n, bytes       int64
	maxN, maxBytes int64
}

func newCallLimit(maxN, maxBytes int64) *callLimit {
	l := &callLimit{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

// acquire waits until one more call of size bytes fits; a call larger than
// the byte bound fits when nothing else is in flight.
func (l *callLimit) acquire(size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.n >= l.maxN || (l.n > 0 && l.bytes+size > l.maxBytes) {
		l.cond.Wait()
	}
	l.n++
	l.bytes += size
}

func (l *callLimit) release(size int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= size
	l.mu.Unlock()
	l.cond.Broadcast()
}

// maxLaneFrame bounds one frame (length prefix excluded).
const maxLaneFrame = MaxMessageSize + 8

// ErrLaneClosed is returned by calls on a lane whose connection ended.
var ErrLaneClosed = errors.New("hook lane closed")

// writeFrame sends one frame. Writes are serialized by mu; each frame goes
// out in one writev.
func writeFrame(c net.Conn, mu *sync.Mutex, id uint64, msg *capnp.Message) error {
	w := frameWriters.Get().(*frameWriter)
	binary.LittleEndian.PutUint64(w.hdr[4:12], id)
	if seg, err := msg.Segment(0); err == nil && msg.NumSegments() == 1 {
		// One segment (every frame NewFrame makes, unless it outgrew
		// its first segment): the standard framing's header goes with
		// the frame's, and the segment is written where it lies.
		data := seg.Data()
		binary.LittleEndian.PutUint32(w.hdr[:4], uint32(8+8+len(data)))
		binary.LittleEndian.PutUint32(w.hdr[12:16], 0) // segment count - 1
		binary.LittleEndian.PutUint32(w.hdr[16:20], uint32(len(data)/8))
		w.vec = [2][]byte{w.hdr[:20], data}
	} else {
		body, err := msg.Marshal()
		if err != nil {
			frameWriters.Put(w)
			return err
		}
		binary.LittleEndian.PutUint32(w.hdr[:4], uint32(8+len(body)))
		w.vec = [2][]byte{w.hdr[:12], body}
	}
	w.bufs = w.vec[:] // WriteTo consumes bufs, not vec
	mu.Lock()
	_, err := w.bufs.WriteTo(c)
	mu.Unlock()
	w.vec[1], w.bufs = nil, nil // the pool keeps no body
	frameWriters.Put(w)
	return err
}

// frameWriter is a frame's header and the writev vector, reused: a frame
// written costs no allocation beyond its marshalled body.
type frameWriter struct {
	hdr  [20]byte // length, id, and a one-segment message's framing header
	vec  [2][]byte
	bufs net.Buffers
}

var frameWriters = sync.Pool{New: func() any { return new(frameWriter) }}

// readFrame reads one frame with no limits but the frame size; the
// message owns its buffer. (See readFrameLimited.)
func readFrame(r *bufio.Reader) (uint64, *capnp.Message, error) {
	return readFrameLimited(newLimitedReader(r, nil, Limits{}))
}

// NewFrame returns a new message with a LaneFrame root, for a request or a
// reply.
// Release it with ReleaseFrame once written (or with its own Release).
func NewFrame() (*capnp.Message, schema.LaneFrame, error) {
	msg := frameMsgs.Get().(*capnp.Message)
	seg, err := msg.Reset(capnp.SingleSegment(nil))
	if err != nil {
		return nil, schema.LaneFrame{}, err
	}
	f, err := schema.NewRootLaneFrame(seg)
	if err != nil {
		ReleaseFrame(msg)
		return nil, schema.LaneFrame{}, err
	}
	return msg, f, nil
}

// ReleaseFrame releases a message NewFrame made and keeps it for the next.
func ReleaseFrame(msg *capnp.Message) {
	msg.Release()
	frameMsgs.Put(msg)
}

// frameMsgs recycles the messages NewFrame makes (their arenas' buffers
// come from capnp's own pool).
var frameMsgs = sync.Pool{New: func() any { return new(capnp.Message) }}

// LaneClient makes calls on a hook lane. It is safe for concurrent use; one
// goroutine, owned by the client, reads replies until the connection ends.
type LaneClient struct {
	c   net.Conn
	wmu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *capnp.Message
	err     error // set when the reader stops
	done    chan struct{}
}

// NewLaneClient starts a client on c, which it owns.
func NewLaneClient(c net.Conn) *LaneClient {
	l := &LaneClient{c: c, pending: map[uint64]chan *capnp.Message{}, done: make(chan struct{})}
	go l.read()
	return l
}

func (l *LaneClient) read() {
	lr := newLimitedReader(bufio.NewReaderSize(l.c, 64<<10), nil, Limits{})
	var err error
	for {
		var id uint64
		var msg *capnp.Message
		if id, msg, err = readFrameLimited(lr); err != nil {
			break
		}
		if id == 0 { // stopping: what is pending was not started
			msg.Release()
			err = ErrStopping
			break
		}
		l.mu.Lock()
		ch, ok := l.pending[id]
		delete(l.pending, id)
		l.mu.Unlock()
		if ok {
			ch <- msg // buffered: never blocks
		}
	}
	// A frame cut short is the other end dying mid-write (a daemon killed
	// with SIGKILL): the lane is closed, like any other end.
	if peerGone(err) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = ErrLaneClosed
	}
	l.mu.Lock()
	l.err = err
	for id, ch := range l.pending {
		close(ch)
		delete(l.pending, id)
	}
	l.mu.Unlock()
	close(l.done)
}

// Done is closed when the lane's connection has ended.
func (l *LaneClient) Done() <-chan struct{} { return l.done }

// Close ends the lane; calls in flight fail.
func (l *LaneClient) Close() error {
	err := l.c.Close()
	<-l.done
	return err
}

// Call sends the request built by fill and waits for the reply, which the
// caller reads and then releases. When ctx ends first, Call sends cancel and
// returns ctx's error.
func (l *LaneClient) Call(ctx context.Context, fill func(schema.LaneFrame) error) (*capnp.Message, schema.LaneFrame, error) {
	return l.CallWithin(ctx, 0, fill)
}

// CallWithin is Call bounded by timeout as well (0: no bound): when it
// passes first, it sends cancel and returns context.DeadlineExceeded. It
// costs less than a context with a deadline (a pooled timer).
func (l *LaneClient) CallWithin(ctx context.Context, timeout time.Duration, fill func(schema.LaneFrame) error) (*capnp.Message, schema.LaneFrame, error) {
	msg, f, err := NewFrame()
	if err != nil {
		return nil, schema.LaneFrame{}, err
	}
	defer ReleaseFrame(msg)
	if err := fill(f); err != nil {
		return nil, schema.LaneFrame{}, err
	}
	ch := replyChans.Get().(chan *capnp.Message)
	l.mu.Lock()
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		return nil, schema.LaneFrame{}, err
	}
	l.nextID++
	id := l.nextID
	l.pending[id] = ch
	l.mu.Unlock()
	if err := writeFrame(l.c, &l.wmu, id, msg); err != nil {
		l.forget(id)
		if peerGone(err) { // the other end closed: as for a read
			// The reader sees the end too, after whatever the other
			// end sent last: a stopping frame says this request was
			// not started.
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, schema.LaneFrame{}, ctx.Err()
			}
			l.mu.Lock()
			err := l.err
			l.mu.Unlock()
			if errors.Is(err, ErrStopping) {
				return nil, schema.LaneFrame{}, err
			}
			return nil, schema.LaneFrame{}, ErrLaneClosed
		}
		return nil, schema.LaneFrame{}, fmt.Errorf("hook lane: %w", err)
	}
	var expired <-chan time.Time
	if timeout > 0 {
		t := timers.Get().(*time.Timer)
		t.Reset(timeout)
		defer func() { t.Stop(); timers.Put(t) }() // Stop: no stale tick for the next user
		expired = t.C
	}
	select {
	case reply, ok := <-ch:
		if !ok {
			l.mu.Lock()
			err := l.err
			l.mu.Unlock()
			return nil, schema.LaneFrame{}, err
		}
		// The reader took the id out of pending before it sent: nobody
		// else holds ch now. (A call that gave up, below, does not put
		// its channel back: the reader may still send on it.)
		replyChans.Put(ch)
		rf, err := schema.ReadRootLaneFrame(reply)
		if err != nil {
			reply.Release()
			return nil, schema.LaneFrame{}, err
		}
		if rf.Which() == schema.LaneFrame_Which_error {
			text, _ := rf.Error()
			reply.Release()
			return nil, schema.LaneFrame{}, laneError(text)
		}
		return reply, rf, nil
	case <-ctx.Done():
		l.cancel(id)
		return nil, schema.LaneFrame{}, ctx.Err()
	case <-expired:
		l.cancel(id)
		return nil, schema.LaneFrame{}, context.DeadlineExceeded
	}
}

// cancel gives up on call id and tells the other end.
func (l *LaneClient) cancel(id uint64) {
	l.forget(id)
	if cm, cf, err := NewFrame(); err == nil {
		cf.SetCancel()
		_ = writeFrame(l.c, &l.wmu, id, cm)
		ReleaseFrame(cm)
	}
}

// timers recycles CallWithin's timers (stopped when put back).
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// replyChans recycles the channels calls wait for their reply on.
var replyChans = sync.Pool{New: func() any { return make(chan *capnp.Message, 1) }}

func (l *LaneClient) forget(id uint64) {
	l.mu.Lock()
	delete(l.pending, id)
	l.mu.Unlock()
}

// hookTimeout is the deadline of a hook call frame, 0 for anything else.
func hookTimeout(f schema.LaneFrame, ferr error) time.Duration {
	if ferr != nil || f.Which() != schema.LaneFrame_Which_hook {
		return 0
	}
	hc, err := f.Hook()
	if err != nil {
		return 0
	}
	return time.Duration(hc.TimeoutMicros()) * time.Microsecond
}

// LaneHandler answers one request frame by filling reply. An error becomes
// an error frame.
type LaneHandler func(ctx context.Context, req schema.LaneFrame, reply schema.LaneFrame) error

// ServeLane answers requests on c until it ends or ctx is done, running each
// request on its own goroutine; a cancel frame cancels that request's
// context. It closes c and returns once every handler has finished.
func ServeLane(ctx context.Context, c net.Conn, h LaneHandler) error {
	return serveLane(ctx, c, h, nil, nil)
}

func serveLane(ctx context.Context, c net.Conn, h LaneHandler, lim *Limits, goodbye <-chan struct{}) error {
	ctx, cancelAll := context.WithCancel(ctx)
	defer cancelAll()
	leaving := make(chan struct{}) // closed when goodbye came first
	dl := &stopDeadline{c: c}
	go func() {
		select {
		case <-ctx.Done():
			c.Close()
		case <-goodbye: // nil: never
			close(leaving)
			dl.stop() // the read loop ends at its next read
		}
	}()

	var (
		wmu           sync.Mutex
		mu            sync.Mutex
		inflight      = map[uint64]context.CancelFunc{}
		wg            sync.WaitGroup
		inflightLimit = newCallLimit(MaxLaneCallsInFlight, MaxLaneBytesInFlight)
		workers       = newWorkers()
	)
	defer workers.stop() // after every request's wg.Wait below
	r := bufio.NewReaderSize(c, 64<<10)
	lr := newLimitedReader(r, nil, Limits{}) // one per connection, not per frame
	if lim != nil {
		lr = newLimitedReader(r, dl, *lim)
	}
	read := func() (uint64, *capnp.Message, error) { return readFrameLimited(lr) }
	var err error
	for {
		var id uint64
		var msg *capnp.Message
		if id, msg, err = read(); err != nil {
			break
		}
		f, ferr := schema.ReadRootLaneFrame(msg)
		if ferr == nil && f.Which() == schema.LaneFrame_Which_cancel {
			mu.Lock()
			if cancel, ok := inflight[id]; ok {
				cancel()
			}
			mu.Unlock()
			msg.Release()
			continue
		}
		size, _ := msg.TotalSize()
		inflightLimit.acquire(int64(size)) // back-pressure: no more reads until calls end
		// A hook call's context carries its deadline from here (one
		// context per call, not two: see HookDeadline).
		var cctx context.Context
		var cancel context.CancelFunc
		if d := hookTimeout(f, ferr); d > 0 {
			cctx, cancel = context.WithTimeout(ctx, d)
		} else {
			cctx, cancel = context.WithCancel(ctx)
		}
		mu.Lock()
		inflight[id] = cancel
		mu.Unlock()
		wg.Add(1)
		workers.run(func() { // one request; wg ends when the handler returns
			defer wg.Done()
			defer inflightLimit.release(int64(size))
			defer func() {
				mu.Lock()
				delete(inflight, id)
				mu.Unlock()
				cancel()
			}()
			defer msg.Release()
			rm, rf, err := NewFrame()
			if err != nil {
				return
			}
			herr := ferr
			if herr == nil {
				herr = h(cctx, f, rf)
			}
			if herr != nil {
				ReleaseFrame(rm)
				if rm, rf, err = NewFrame(); err != nil {
					return
				}
				_ = rf.SetError(laneErrorText(herr))
			}
			_ = writeFrame(c, &wmu, id, rm)
			ReleaseFrame(rm)
		})
	}
	select {
	case <-leaving:
		// Every request read has been answered once the handlers are
		// done; say so, so the caller knows the rest was not started.
		wg.Wait()
		if m, f, ferr := NewFrame(); ferr == nil {
			f.SetStopping()
			_ = writeFrame(c, &wmu, 0, m)
			m.Release()
		}
		c.Close()
		return nil
	default:
	}
	// The peer is gone (or sent garbage): nobody waits for the answers of
	// the calls in flight, so they stop now rather than at their deadlines.
	cancelAll()
	c.Close()
	wg.Wait()
	if peerGone(err) {
		return nil
	}
	return err
}

// laneErrorText is what an error frame says of err: its message without
// transport decoration, keeping its class mark (errdefs), so that the
// caller can tell, say, a plugin that is stopping (unavailable) from one
// that failed.
func laneErrorText(err error) string {
	class, msg := RemoteClass(errdefs.ToWire(err))
	if class == nil {
		return msg
	}
	return "[" + errdefs.Code(class) + "] " + msg
}

// laneError is the error an error frame's text stands for: its message,
// of its class (errors.Is) if it carries a mark.
func laneError(text string) error {
	class, msg := errdefs.FromWire(text)
	if class == nil {
		return errors.New(text)
	}
	return errdefs.WithClass(errors.New(msg), class)
}

// stopDeadline sets a connection's read deadlines (for the limited reader)
// until stop, which sets one in the past that no later call can undo, so
// that a read loop ends whatever deadlines it sets itself.
type stopDeadline struct {
	c       net.Conn
	mu      sync.Mutex
	stopped bool
}

func (d *stopDeadline) Read(p []byte) (int, error) { return d.c.Read(p) }

func (d *stopDeadline) SetReadDeadline(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		t = time.Unix(1, 0)
	}
	return d.c.SetReadDeadline(t)
}

func (d *stopDeadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	d.c.SetReadDeadline(time.Unix(1, 0))
}

// peerGone reports whether err only says the other side closed the lane
// (a reset means it closed with our answers still unread).
func peerGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
