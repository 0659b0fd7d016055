package frames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// MaxPacket is the largest packet on a frame socket. A single message
// (one FrameMsg in standard Cap'n Proto framing) may be this long: inline
// frames must fit in it, with room for the other fields; bigger frames
// travel as descriptors into a pool.
const MaxPacket = 192 << 10

// BatchMax bounds the messages a sender packs back to back into one packet
// (a single larger message still goes, alone). Batching is what makes small
// frames cheap: one sendmsg and one recvmsg carry many of them.
const BatchMax = 64 << 10

// MaxFDs is the largest number of file descriptors one packet may carry.
const MaxFDs = 8

// ErrTooLarge is wrapped by Send when the message does not fit in one
// packet.
var ErrTooLarge = errors.New("message exceeds the packet limit")

// ErrClosed is wrapped by calls on a closed Allocator or Mappings.
var ErrClosed = errors.New("closed")

// Conn is one end of a frame socket: a SOCK_SEQPACKET Unix socket whose
// packets carry FrameMsgs back to back, each in standard Cap'n Proto
// framing, with memfds attached as SCM_RIGHTS to a packet of one message.
//
// Sending batches: a message joins the batch being built, and whichever
// goroutine finds no write in progress writes it (with everything queued
// meanwhile) in one sendmsg. Send writes at once when the socket is idle;
// Buffer leaves the message for a later Send or Flush. The batch is bounded
// (BatchMax): senders wait while it is full and a write is in progress, so
// the socket buffer stays the queue that pushes back. All sending methods
// are safe for concurrent use. Recv has a single reader at a time.
type Conn struct {
	uc *net.UnixConn

	wmu      sync.Mutex
	wcond    *sync.Cond // signalled when the batch is taken or a write ends
	batch    []byte     // messages waiting to be written, back to back
	spare    []byte     // the other buffer: batch and spare swap on every write
	flushing bool       // a goroutine is writing; it writes batch before it stops
	werr     error      // the first write error; sending fails with it from then on
	taken    uint64     // batches taken for writing so far (batch is number taken+1)
	written  uint64     // batches whose write has ended, in order (≤ taken)

	rmu   sync.Mutex // serializes Recv; guards the fields below
	rbuf  []byte
	oob   []byte
	pkt   []byte     // the unread messages of the last packet
	files []*os.File // the descriptors of the last packet, for its first message
	rmsg  capnp.Message
	rseg  *capnp.ReadOnlySingleSegment // rmsg's arena for single-segment messages
}

// NewConn returns a Conn on c, which must be a SOCK_SEQPACKET socket
// ("unixpacket"). The Conn takes ownership of c.
func NewConn(c *net.UnixConn) *Conn {
	conn := &Conn{uc: c}
	conn.wcond = sync.NewCond(&conn.wmu)
	return conn
}

// Socketpair returns a connected pair of frame sockets: ours, for this
// process, and theirs, to hand to a plugin (as file descriptor 5) or to a
// host (over SCM_RIGHTS, see SendFD). Both are close-on-exec; the caller
// closes theirs once it has been passed on.
func Socketpair() (ours *Conn, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("frames: socketpair: %w", os.NewSyscallError("socketpair", err))
	}
	for _, fd := range fds {
		// Room for a few maximal packets in flight; the kernel caps it at
		// net.core.wmem_max, and the default already fits one packet.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4*MaxPacket)
	}
	f := os.NewFile(uintptr(fds[0]), "frames-socket")
	ours, err = FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return ours, os.NewFile(uintptr(fds[1]), "frames-socket"), nil
}

// FileConn returns a Conn on a duplicate of f's descriptor, which must be a
// SOCK_SEQPACKET Unix socket (a plugin passes os.NewFile(5, ...)). f is left
// open and still belongs to the caller, who should close it once FileConn
// returns; closing f does not affect the Conn, and closing the Conn does not
// close f.
func FileConn(f *os.File) (*Conn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("frames: frame socket %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("frames: frame socket %s: not a Unix socket", f.Name())
	}
	if a, ok := uc.LocalAddr().(*net.UnixAddr); !ok || a.Net != "unixpacket" {
		uc.Close()
		return nil, fmt.Errorf("frames: frame socket %s: not SOCK_SEQPACKET", f.Name())
	}
	return NewConn(uc), nil
}

// msgPool recycles the messages Send encodes into (their arenas come from
// capnp's own buffer pool).
var msgPool = sync.Pool{New: func() any { return new(capnp.Message) }}

// encoded is one message in standard framing: hdr, then seg.
type encoded struct {
	msg   *capnp.Message
	which schema.FrameMsg_Which
	hdr   [8]byte // segment count - 1 (0), then the segment's length in words
	seg   []byte
}

func (e *encoded) len() int { return len(e.hdr) + len(e.seg) }

// release recycles the message; e's bytes are gone.
func (e *encoded) release() {
	e.msg.Reset(nil)
	msgPool.Put(e.msg)
}

// encode builds one message with a FrameMsg root and lets fill set it. The
// caller releases it.
func encode(fill func(schema.FrameMsg) error) (encoded, error) {
	e := encoded{msg: msgPool.Get().(*capnp.Message)}
	fail := func(err error) (encoded, error) {
		e.release()
		return encoded{}, err
	}
	seg, err := e.msg.Reset(capnp.SingleSegment(nil))
	if err != nil {
		return fail(err)
	}
	root, err := schema.NewRootFrameMsg(seg)
	if err != nil {
		return fail(err)
	}
	err = fill(root)
	e.which = root.Which()
	if err != nil {
		return fail(fmt.Errorf("%s: %w", e.which, err))
	}
	if n := e.msg.NumSegments(); n != 1 {
		return fail(fmt.Errorf("%s: %d segments, want 1", e.which, n))
	}
	e.seg = seg.Data()
	binary.LittleEndian.PutUint32(e.hdr[4:], uint32(len(e.seg)/8))
	if total := e.len(); total > MaxPacket {
		return fail(fmt.Errorf("%s: %d bytes, the limit is %d: %w", e.which, total, MaxPacket, ErrTooLarge))
	}
	return e, nil
}

// Send builds one message with a FrameMsg root, lets fill set it, and sends
// it: at once when no write is in progress, else with the batch that write
// takes next (see Conn). A message with fds attached (their descriptors are
// duplicated into the peer; the caller keeps the files) is written before
// Send returns, in a packet of its own after everything queued before it.
// Send fails with ErrTooLarge when the message is bigger than MaxPacket, and
// with the connection's write error once a write has failed (a message that
// joined a batch whose write failed is lost with the connection).
func (c *Conn) Send(fill func(schema.FrameMsg) error, fds ...*os.File) error {
	return c.send(fill, fds, true)
}

// Buffer is Send without the write: the message waits in the batch for the
// next Send or Flush (or is written now if the batch is full). It takes no
// file descriptors.
func (c *Conn) Buffer(fill func(schema.FrameMsg) error) error {
	return c.send(fill, nil, false)
}

// Flush writes what Buffer left, unless a write in progress will take it.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.flushing || c.werr != nil {
		return c.werr
	}
	c.flushing = true
	return c.drainLocked()
}

func (c *Conn) send(fill func(schema.FrameMsg) error, fds []*os.File, now bool) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("frames: send: %d file descriptors, at most %d per packet", len(fds), MaxFDs)
	}
	e, err := encode(fill)
	if err != nil {
		return fmt.Errorf("frames: send %w", err)
	}
	defer e.release()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(fds) > 0 {
		// A packet with descriptors holds one message: wait for the
		// write in progress, then write the batch and this packet.
		for c.flushing {
			c.wcond.Wait()
		}
		if c.werr != nil {
			return fmt.Errorf("frames: send %s: %w", e.which, c.werr)
		}
		c.flushing = true
		if err := c.writeBatchLocked(); err != nil {
			c.drainLocked()
			return fmt.Errorf("frames: send %s: %w", e.which, err)
		}
		c.wmu.Unlock()
		hdr := append([]byte(nil), e.hdr[:]...) // the packet's own: e stays on the stack
		err := withFDs(fds, make([]int, 0, len(fds)), func(raw []int) error {
			return c.write([][]byte{hdr, e.seg}, unix.UnixRights(raw...))
		})
		c.wmu.Lock()
		if err != nil && c.werr == nil {
			c.werr = err
		}
		c.drainLocked()
		if err != nil {
			return fmt.Errorf("frames: send %s: %w", e.which, err)
		}
		return nil
	}
	for c.werr == nil && len(c.batch) > 0 && len(c.batch)+e.len() > BatchMax {
		if c.flushing { // full: wait for the writer to take it
			c.wcond.Wait()
			continue
		}
		c.flushing = true
		c.drainLocked() // also writes what others add meanwhile: they count on it
	}
	if c.werr != nil {
		return fmt.Errorf("frames: send %s: %w", e.which, c.werr)
	}
	if c.batch == nil {
		c.batch = make([]byte, 0, BatchMax)
	}
	c.batch = append(append(c.batch, e.hdr[:]...), e.seg...)
	if !now || c.flushing {
		return nil
	}
	c.flushing = true
	if err := c.drainLocked(); err != nil {
		return fmt.Errorf("frames: send %s: %w", e.which, err)
	}
	return nil
}

// Sync waits until every message sent or buffered before it was called has
// been written to the socket (by this goroutine, when no write is in
// progress), and returns the connection's write error, if any. Send alone
// may return while another goroutine's write is about to take its message;
// a sender that closes the connection next, such as one saying goodbye,
// calls Sync first so that the message is not lost.
func (c *Conn) Sync() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.batch) > 0 {
		want := c.taken + 1 // the batch being filled
		for c.werr == nil && c.written < want {
			if !c.flushing {
				c.flushing = true
				c.drainLocked()
				continue
			}
			c.wcond.Wait()
		}
		return c.werr
	}
	for c.werr == nil && c.written < c.taken { // a write in progress
		c.wcond.Wait()
	}
	return c.werr
}

// drainLocked writes batches until none is left, then ends the caller's
// turn as the writer (c.flushing, which the caller set). wmu is held on
// entry and exit and released during each write.
func (c *Conn) drainLocked() error {
	for c.werr == nil && len(c.batch) > 0 {
		c.writeBatchLocked()
	}
	c.flushing = false
	c.wcond.Broadcast()
	return c.werr
}

// writeBatchLocked takes the batch and writes it as one packet, releasing
// wmu meanwhile, so that other senders fill the spare buffer. The caller is
// the writer (c.flushing).
func (c *Conn) writeBatchLocked() error {
	if len(c.batch) == 0 || c.werr != nil {
		return c.werr
	}
	b := c.batch
	c.batch, c.spare = c.spare[:0], nil
	c.taken++
	c.wcond.Broadcast() // room in the batch again
	c.wmu.Unlock()
	err := c.write([][]byte{b}, nil)
	c.wmu.Lock()
	c.spare = b[:0]
	c.written++
	c.wcond.Broadcast() // for Sync
	if err != nil && c.werr == nil {
		c.werr = err
	}
	return c.werr
}

// write sends one packet, waiting (in the runtime's poller) while the
// socket is full.
func (c *Conn) write(bufs [][]byte, oob []byte) error {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		for {
			_, serr = unix.SendmsgBuffers(int(fd), bufs, oob, nil, unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	})
	if werr != nil {
		return werr
	}
	if serr != nil {
		return os.NewSyscallError("sendmsg", serr)
	}
	return nil
}

// withFDs calls fn with the raw descriptors of files, each held open (by
// RawConn.Control) until fn returns, without changing their blocking mode
// as File.Fd would.
func withFDs(files []*os.File, raw []int, fn func([]int) error) error {
	if len(files) == 0 {
		return fn(raw)
	}
	if files[0] == nil {
		return errors.New("nil file")
	}
	rc, err := files[0].SyscallConn()
	if err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = withFDs(files[1:], append(raw, int(fd)), fn)
	}); err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	return ferr
}

// Recv returns the next message: the next one of the last packet, or the
// first one of a new packet. The caller reads the FrameMsg, then releases
// the message, and owns the files that came with it (close-on-exec; they
// come with the first message of their packet). The message is the Conn's
// own, reused: it is valid until the next Recv, whether or not it was
// released, so copy out what must outlive it. Recv returns io.EOF once the
// peer has closed its end. Only one goroutine may be receiving at a time
// (concurrent calls are serialized).
func (c *Conn) Recv() (*capnp.Message, schema.FrameMsg, []*os.File, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	fail := func(files []*os.File, err error) (*capnp.Message, schema.FrameMsg, []*os.File, error) {
		closeFiles(files)
		return nil, schema.FrameMsg{}, nil, err
	}
	if len(c.pkt) == 0 {
		closeFiles(c.files) // a packet's files belong to its first message
		c.files = nil
		if c.rbuf == nil {
			c.rbuf = make([]byte, MaxPacket)
			c.oob = make([]byte, unix.CmsgSpace(MaxFDs*4))
		}
		n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.rbuf, c.oob)
		files, ferr := parseRights(c.oob[:oobn])
		switch {
		case errors.Is(err, io.EOF), err == nil && n == 0 && oobn == 0:
			return fail(files, io.EOF)
		case err != nil:
			return fail(files, fmt.Errorf("frames: recv: %w", err))
		case ferr != nil:
			return fail(files, fmt.Errorf("frames: recv: %w", ferr))
		case flags&unix.MSG_TRUNC != 0:
			return fail(files, fmt.Errorf("frames: recv: packet larger than %d bytes", MaxPacket))
		case flags&unix.MSG_CTRUNC != 0:
			return fail(files, fmt.Errorf("frames: recv: more than %d file descriptors in a packet", MaxFDs))
		}
		// The messages read rbuf in place: they are valid until the
		// next Recv, and the next packet is read by a later one.
		c.pkt = c.rbuf[:n]
		c.files = files
	}
	pkt := c.pkt
	n, err := messageLen(pkt)
	if err != nil {
		c.pkt = nil // the rest of the packet cannot be found
		return fail(nil, fmt.Errorf("frames: recv: packet of %d bytes: %w", len(pkt), err))
	}
	c.pkt = pkt[n:]
	files := c.files
	c.files = nil
	msg, err := c.unmarshal(pkt[:n:n])
	if err != nil {
		return fail(files, fmt.Errorf("frames: recv: packet of %d bytes: %w", len(pkt), err))
	}
	root, err := schema.ReadRootFrameMsg(msg)
	if err != nil {
		msg.Release()
		return fail(files, fmt.Errorf("frames: recv: packet of %d bytes: %w", len(pkt), err))
	}
	return msg, root, files, nil
}

// unmarshal reads one message of messageLen's length into the Conn's
// reused message (single-segment messages, what Send makes) or a new one.
func (c *Conn) unmarshal(b []byte) (*capnp.Message, error) {
	if binary.LittleEndian.Uint32(b) != 0 {
		return capnp.Unmarshal(b)
	}
	c.rmsg.Reset(nil) // releases the arena, if the caller did not
	if c.rseg == nil {
		c.rseg = capnp.NewReadOnlySingleSegment(b[8:])
	} else {
		c.rseg.ReplaceData(b[8:])
	}
	if _, err := c.rmsg.Reset(c.rseg); err != nil {
		return nil, err
	}
	return &c.rmsg, nil
}

// messageLen returns the length of the message in standard framing at the
// start of b.
func messageLen(b []byte) (int, error) {
	if len(b) < 8 {
		return 0, errors.New("short framing header")
	}
	segs := uint64(binary.LittleEndian.Uint32(b)) + 1
	if segs > 512 {
		return 0, fmt.Errorf("%d segments", segs)
	}
	hdr := (4 + 4*segs + 7) &^ 7
	if uint64(len(b)) < hdr {
		return 0, errors.New("short framing header")
	}
	total := hdr
	for i := uint64(0); i < segs; i++ {
		total += 8 * uint64(binary.LittleEndian.Uint32(b[4+4*i:]))
	}
	if total > uint64(len(b)) {
		return 0, fmt.Errorf("a message of %d bytes does not fit", total)
	}
	return int(total), nil
}

// SyscallConn gives access to the socket's descriptor (to hand it over
// across execve, say).
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.uc.SyscallConn() }

// SetWriteDeadline bounds the writes of Send and Flush (net.Conn's rule).
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// Close closes the socket. A Recv in progress returns an error.
func (c *Conn) Close() error {
	return c.uc.Close()
}

// parseRights returns the files carried by SCM_RIGHTS control messages. It
// returns every file it could make even when it also returns an error.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	var firstErr error
	for i := range cmsgs {
		if cmsgs[i].Header.Level != unix.SOL_SOCKET || cmsgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		fds, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("control message: %w", err)
			}
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "frames-fd"))
		}
	}
	return files, firstErr
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// SendFD writes b with f's descriptor attached (SCM_RIGHTS) on c, a stream
// or datagram Unix socket. It is the daemon's side of the host handshake
// (wire.FramesPreamble and a token → one byte and the host's frame
// socket). The caller keeps f.
func SendFD(c *net.UnixConn, b []byte, f *os.File) error {
	var files []*os.File
	if f != nil {
		files = []*os.File{f}
	}
	err := withFDs(files, nil, func(raw []int) error {
		var oob []byte
		if len(raw) > 0 {
			oob = unix.UnixRights(raw...)
		}
		n, _, err := c.WriteMsgUnix(b, oob, nil)
		if err == nil && n != len(b) {
			err = io.ErrShortWrite
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("frames: send fd: %w", err)
	}
	return nil
}

// RecvFD reads into b and returns the number of bytes read and the
// descriptor that came with them, or a nil file when none did (extra
// descriptors are closed). It returns io.EOF when the peer closed the
// connection without sending anything. On a stream socket the descriptor
// arrives with the first byte it was sent with, so b may be as short as the
// expected answer (one byte for the frame handshake).
func RecvFD(c *net.UnixConn, b []byte) (int, *os.File, error) {
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	files, ferr := parseRights(oob[:oobn])
	if err == nil && n == 0 && len(files) == 0 {
		err = io.EOF
	}
	if err == nil {
		err = ferr
	}
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = fmt.Errorf("more than %d file descriptors", MaxFDs)
	}
	if err != nil {
		closeFiles(files)
		if errors.Is(err, io.EOF) {
			return n, nil, io.EOF
		}
		return n, nil, fmt.Errorf("frames: recv fd: %w", err)
	}
	if len(files) == 0 {
		return n, nil, nil
	}
	closeFiles(files[1:])
	return n, files[0], nil
}
