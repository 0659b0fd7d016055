package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// Limits bound what one peer's connection may make the reader hold. The
// daemon reads hosts' and operators' connections with them; see
// docs/protocol.md, "Sockets, rights and limits".
type Limits struct {
	// MaxMessage is the largest message (Cap'n Proto message, or lane
	// frame) accepted; a bigger one ends the connection. Zero:
	// MaxMessageSize.
	MaxMessage int64
	// FirstMessage bounds the time from the start of the connection until
	// its first message is complete. Zero: no bound.
	FirstMessage time.Duration
	// MessageTimeout bounds the time from the first byte of a message until
	// its last; a peer that stops in the middle of a message is cut off.
	// Zero: no bound. Between messages a connection may stay idle.
	MessageTimeout time.Duration
	// Budget, when set, is shared by every connection read with it: the
	// bytes held by messages still being received (beyond a small first
	// chunk) are taken from it, so half-sent messages on any number of
	// connections pin at most its size. A message that cannot get its
	// bytes before MessageTimeout ends its connection.
	Budget *Budget
	// TraversalFactor sets each received message's Cap'n Proto traversal
	// limit to this many times its size (plus 64 KiB): reading a message
	// costs at most that much however its pointers are arranged. Zero: 4.
	TraversalFactor int
}

// smallMessage is read without taking from a Budget: every connection may
// hold this much of a half-sent message.
const smallMessage = 64 << 10

func (l *Limits) maxMessage() int64 {
	if l == nil || l.MaxMessage <= 0 {
		return MaxMessageSize
	}
	return l.MaxMessage
}

// ErrBudget is returned when a message could not get buffer space from
// its Budget before its deadline.
var ErrBudget = errors.New("too many bytes in half-received messages on this daemon; try again")

// Budget is a pool of bytes shared by readers (see Limits.Budget). It is
// safe for concurrent use.
type Budget struct {
	mu      sync.Mutex
	size    int64
	avail   int64
	changed chan struct{} // closed and replaced when bytes are returned
}

// NewBudget returns a budget of size bytes.
func NewBudget(size int64) *Budget {
	return &Budget{size: size, avail: size, changed: make(chan struct{})}
}

// Size is the budget's capacity.
func (b *Budget) Size() int64 { return b.size }

// InUse is how many bytes readers hold now.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.size - b.avail
}

// acquire takes n bytes, waiting until deadline (zero: forever) for them.
func (b *Budget) acquire(n int64, deadline time.Time) error {
	if n > b.size {
		return fmt.Errorf("a message of %d bytes is larger than the receive budget (%d bytes)", n, b.size)
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		if b.avail >= n {
			b.avail -= n
			b.mu.Unlock()
			return nil
		}
		ch := b.changed
		b.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return ErrBudget
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-ch:
		case <-expired:
			return ErrBudget
		}
	}
}

func (b *Budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// deadliner is the part of net.Conn the reader needs to bound its reads.
type deadliner interface{ SetReadDeadline(time.Time) error }

// limitedReader reads length-delimited messages from a connection under
// Limits.
type limitedReader struct {
	r     *bufio.Reader
	dl    deadliner // nil: no timeouts
	lim   Limits
	start time.Time // connection start, for FirstMessage
	first bool      // no message completed yet
	armed bool      // a read deadline is set
	// msgStart is when the first byte of the message being read arrived.
	msgStart time.Time
}

func newLimitedReader(r *bufio.Reader, c io.Reader, lim Limits) *limitedReader {
	lr := &limitedReader{r: r, lim: lim, start: time.Now(), first: true}
	if d, ok := c.(deadliner); ok {
		lr.dl = d
	}
	return lr
}

// begin is called before a message's first byte: it waits for that byte
// (bounded only for the first message) and starts the message's clock.
func (lr *limitedReader) begin() error {
	if lr.dl == nil {
		return nil
	}
	if lr.first && lr.lim.FirstMessage > 0 {
		lr.setDeadline(lr.start.Add(lr.lim.FirstMessage))
	}
	_, err := lr.r.Peek(1)
	lr.msgStart = time.Now()
	return err
}

// need is called before reading n more bytes of the message: unless they
// are buffered already, the message's deadline is armed (a read deadline
// costs a timer; a message that arrived whole needs none).
func (lr *limitedReader) need(n int64) {
	if lr.dl == nil || lr.armed || lr.lim.MessageTimeout <= 0 || int64(lr.r.Buffered()) >= n {
		return
	}
	lr.setDeadline(lr.msgStart.Add(lr.lim.MessageTimeout))
}

// deadline is when the message being read must be complete (zero: never).
func (lr *limitedReader) deadline() time.Time {
	if lr.first && lr.lim.FirstMessage > 0 {
		return lr.start.Add(lr.lim.FirstMessage)
	}
	if lr.lim.MessageTimeout > 0 {
		return lr.msgStart.Add(lr.lim.MessageTimeout)
	}
	return time.Time{}
}

func (lr *limitedReader) setDeadline(t time.Time) {
	lr.dl.SetReadDeadline(t)
	lr.armed = true
}

// end is called after a message was read completely.
func (lr *limitedReader) end() {
	lr.first = false
	if lr.armed {
		lr.dl.SetReadDeadline(time.Time{})
		lr.armed = false
	}
}

// readBody reads n bytes into a buffer that starts with prefix. Beyond
// smallMessage, the buffer grows as bytes arrive (doubling), each step
// taken from the budget when there is one, so a peer pins only what it
// really sent (at most twice that): a length prefix alone never makes the
// reader commit the size it announces. The returned function gives the
// budget back; the caller calls it once it has the message.
func (lr *limitedReader) readBody(prefix []byte, n int64, deadline time.Time) ([]byte, func(), error) {
	total := int64(len(prefix)) + n
	if total <= smallMessage {
		buf := make([]byte, total)
		copy(buf, prefix)
		if _, err := io.ReadFull(lr.r, buf[len(prefix):]); err != nil {
			return nil, nil, err
		}
		return buf, func() {}, nil
	}
	b := lr.lim.Budget
	var held int64
	release := func() {
		if b != nil {
			b.release(held)
			held = 0
		}
	}
	buf := make([]byte, len(prefix), smallMessage)
	copy(buf, prefix)
	for int64(len(buf)) < total {
		if len(buf) == cap(buf) {
			grow := min(total, 2*int64(cap(buf)))
			if b != nil {
				if err := b.acquire(grow, deadline); err != nil {
					release()
					return nil, nil, err
				}
			}
			nb := make([]byte, len(buf), grow)
			copy(nb, buf)
			if b != nil {
				b.release(held)
				held = grow
			}
			buf = nb
		}
		m, err := lr.r.Read(buf[len(buf):min(int64(cap(buf)), total)])
		buf = buf[:len(buf)+m]
		if err != nil {
			release()
			return nil, nil, err
		}
	}
	return buf, release, nil
}

// readFrameLimited is readFrame under a limitedReader's limits.
func readFrameLimited(lr *limitedReader) (uint64, *capnp.Message, error) {
	if err := lr.begin(); err != nil {
		return 0, nil, wrapTimeout(err, lr)
	}
	deadline := lr.deadline()
	lr.need(12)
	var hdr [12]byte
	if _, err := io.ReadFull(lr.r, hdr[:]); err != nil {
		return 0, nil, wrapTimeout(err, lr)
	}
	n := int64(binary.LittleEndian.Uint32(hdr[:4]))
	if n < 8 || n > min(maxLaneFrame, lr.lim.maxMessage()+8) {
		return 0, nil, fmt.Errorf("hook lane: frame of %d bytes out of bounds (at most %d)", n, min(maxLaneFrame, lr.lim.maxMessage()+8))
	}
	id := binary.LittleEndian.Uint64(hdr[4:])
	lr.need(n - 8)
	buf, release, err := lr.readBody(nil, n-8, deadline)
	if err != nil {
		return 0, nil, wrapTimeout(midMessage(err), lr)
	}
	release()
	lr.end()
	msg, err := capnp.Unmarshal(buf)
	if err != nil {
		// Not wrapped: a malformed frame is no clean end of stream.
		return 0, nil, fmt.Errorf("hook lane: malformed frame %d: %v", id, err)
	}
	f := lr.lim.TraversalFactor
	if f <= 0 {
		f = 4
	}
	msg.TraverseLimit = uint64(f)*uint64(len(buf)) + 64<<10
	return id, msg, nil
}

// limitedCodec decodes Cap'n Proto messages under Limits.
type limitedCodec struct {
	lr  *limitedReader
	enc *capnp.Encoder
	c   io.Closer
	mu  sync.Mutex
}

func (c *limitedCodec) Encode(m *capnp.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enc.Encode(m)
}

func (c *limitedCodec) Close() error { return c.c.Close() }

// maxSegments matches the Cap'n Proto library's own bound.
const maxSegments = 512

func (c *limitedCodec) Decode() (*capnp.Message, error) {
	lr := c.lr
	if err := lr.begin(); err != nil {
		return nil, c.wrap(err)
	}
	deadline := lr.deadline()
	lr.need(8)
	var word [8]byte
	if _, err := io.ReadFull(lr.r, word[:]); err != nil {
		return nil, c.wrap(err)
	}
	segs := int64(binary.LittleEndian.Uint32(word[:4])) + 1
	if segs > maxSegments {
		return nil, fmt.Errorf("decode: message of %d segments (at most %d)", segs, maxSegments)
	}
	hdrLen := (4 + 4*segs + 7) &^ 7
	hdr := make([]byte, hdrLen)
	copy(hdr, word[:])
	lr.need(hdrLen - 8)
	if _, err := io.ReadFull(lr.r, hdr[8:]); err != nil {
		return nil, c.wrap(midMessage(err))
	}
	var words int64
	for i := int64(0); i < segs; i++ {
		words += int64(binary.LittleEndian.Uint32(hdr[4+4*i:]))
	}
	max := lr.lim.maxMessage()
	if words*8+hdrLen > max {
		return nil, fmt.Errorf("decode: message of %d bytes is larger than this connection accepts (%d bytes)", words*8+hdrLen, max)
	}
	lr.need(words * 8)
	buf, release, err := lr.readBody(hdr, words*8, deadline)
	if err != nil {
		return nil, c.wrap(midMessage(err))
	}
	defer release()
	lr.end()
	msg, err := capnp.Unmarshal(buf)
	if err != nil {
		return nil, err
	}
	f := lr.lim.TraversalFactor
	if f <= 0 {
		f = 4
	}
	msg.TraverseLimit = uint64(f)*uint64(len(buf)) + 64<<10
	return msg, nil
}

// midMessage turns io.EOF inside a message into io.ErrUnexpectedEOF: the
// peer stopped in the middle, which is no clean end.
func midMessage(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// wrap says which limit a timeout was.
func (c *limitedCodec) wrap(err error) error {
	return wrapTimeout(err, c.lr)
}

func wrapTimeout(err error, lr *limitedReader) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if lr.first && lr.lim.FirstMessage > 0 {
			return fmt.Errorf("no complete first message within %s: %w", lr.lim.FirstMessage, err)
		}
		return fmt.Errorf("message not completed within %s: %w", lr.lim.MessageTimeout, err)
	}
	return err
}

// NewConnLimited is NewConn with the reads of rwc bounded by lim; rwc
// should be a net.Conn (or wrap one's SetReadDeadline) for the timeouts to
// hold.
func NewConnLimited(rwc io.ReadWriteCloser, bootstrap capnp.Client, logger rpc.Logger, lim Limits) *rpc.Conn {
	br := bufio.NewReaderSize(rwc, 64<<10)
	codec := &limitedCodec{lr: newLimitedReader(br, rwc, lim), enc: capnp.NewEncoder(rwc), c: rwc}
	return rpc.NewConn(transport.New(codec), &rpc.Options{
		BootstrapClient: bootstrap,
		Logger:          logger,
	})
}

// ServeLaneLimited is ServeLane with the reads of c bounded by lim. When
// goodbye (which may be nil) is closed, it stops reading, waits for the
// handlers of the requests it read, sends the stopping frame (see
// schema/lane.capnp) and closes c: the daemon's end of a host lane.
func ServeLaneLimited(ctx context.Context, c net.Conn, h LaneHandler, lim Limits, goodbye <-chan struct{}) error {
	return serveLane(ctx, c, h, &lim, goodbye)
}
