package frames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"capnproto.org/go/capnp/v3"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/schema"
)

// MaxPacket is the largest packet on a frame socket: one FrameMsg in
// standard Cap'n Proto framing. Inline frames must fit in it, with room for
// the other fields; bigger frames travel as descriptors into a pool.
const MaxPacket = 192 << 10

// MaxFDs is the largest number of file descriptors one packet may carry.
const MaxFDs = 8

// ErrTooLarge is wrapped by Send when the message does not fit in one
// packet.
var ErrTooLarge = errors.New("message exceeds the packet limit")

// ErrClosed is wrapped by calls on a closed Allocator or Mappings.
var ErrClosed = errors.New("closed")

// Conn is one end of a frame socket: a SOCK_SEQPACKET Unix socket carrying
// one FrameMsg per packet, with memfds attached as SCM_RIGHTS.
//
// Send is safe for concurrent use (a packet is sent with one sendmsg, which
// the kernel keeps whole). Recv has a single reader at a time.
type Conn struct {
	uc *net.UnixConn

	rmu  sync.Mutex // serializes Recv; guards rbuf and oob
	rbuf []byte
	oob  []byte
}

// NewConn returns a Conn on c, which must be a SOCK_SEQPACKET socket
// ("unixpacket"). The Conn takes ownership of c.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{uc: c}
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

// Send builds one message with a FrameMsg root, lets fill set it, and sends
// it as one packet with fds attached (their descriptors are duplicated into
// the peer; the caller keeps the files). It fails with ErrTooLarge when the
// message is bigger than MaxPacket. The message bytes are not copied: the
// framing header and the segment go out with one sendmsg.
func (c *Conn) Send(fill func(schema.FrameMsg) error, fds ...*os.File) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("frames: send: %d file descriptors, at most %d per packet", len(fds), MaxFDs)
	}
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return fmt.Errorf("frames: send: %w", err)
	}
	defer msg.Release()
	root, err := schema.NewRootFrameMsg(seg)
	if err != nil {
		return fmt.Errorf("frames: send: %w", err)
	}
	if err := fill(root); err != nil {
		return fmt.Errorf("frames: send %s: %w", root.Which(), err)
	}
	if msg.NumSegments() != 1 {
		return fmt.Errorf("frames: send %s: %d segments, want 1", root.Which(), msg.NumSegments())
	}
	data := seg.Data()
	var hdr [8]byte // segment count - 1 (0), then the segment's length in words
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(data)/8))
	if total := len(hdr) + len(data); total > MaxPacket {
		return fmt.Errorf("frames: send %s: %d bytes, the limit is %d: %w", root.Which(), total, MaxPacket, ErrTooLarge)
	}
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("frames: send %s: %w", root.Which(), err)
	}
	bufs := [][]byte{hdr[:], data}
	err = withFDs(fds, make([]int, 0, len(fds)), func(raw []int) error {
		var oob []byte
		if len(raw) > 0 {
			oob = unix.UnixRights(raw...)
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
	})
	if err != nil {
		return fmt.Errorf("frames: send %s: %w", root.Which(), err)
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

// Recv reads one packet. The caller reads the FrameMsg, then releases the
// message, and owns the files that came with it (close-on-exec). Recv
// returns io.EOF once the peer has closed its end. Only one goroutine may
// be receiving at a time (concurrent calls are serialized).
func (c *Conn) Recv() (*capnp.Message, schema.FrameMsg, []*os.File, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rbuf == nil {
		c.rbuf = make([]byte, MaxPacket)
		c.oob = make([]byte, unix.CmsgSpace(MaxFDs*4))
	}
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.rbuf, c.oob)
	files, ferr := parseRights(c.oob[:oobn])
	fail := func(err error) (*capnp.Message, schema.FrameMsg, []*os.File, error) {
		closeFiles(files)
		return nil, schema.FrameMsg{}, nil, err
	}
	switch {
	case errors.Is(err, io.EOF), err == nil && n == 0 && oobn == 0:
		return fail(io.EOF)
	case err != nil:
		return fail(fmt.Errorf("frames: recv: %w", err))
	case ferr != nil:
		return fail(fmt.Errorf("frames: recv: %w", ferr))
	case flags&unix.MSG_TRUNC != 0:
		return fail(fmt.Errorf("frames: recv: packet larger than %d bytes", MaxPacket))
	case flags&unix.MSG_CTRUNC != 0:
		return fail(fmt.Errorf("frames: recv: more than %d file descriptors in a packet", MaxFDs))
	}
	buf := make([]byte, n) // the message owns its bytes; rbuf is reused
	copy(buf, c.rbuf[:n])
	msg, err := capnp.Unmarshal(buf)
	if err != nil {
		return fail(fmt.Errorf("frames: recv: packet of %d bytes: %w", n, err))
	}
	root, err := schema.ReadRootFrameMsg(msg)
	if err != nil {
		msg.Release()
		return fail(fmt.Errorf("frames: recv: packet of %d bytes: %w", n, err))
	}
	return msg, root, files, nil
}

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
// ("DPFRAME1\n" → one byte and the host's frame socket). The caller keeps f.
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
