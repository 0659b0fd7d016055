package daemon

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// face is what a socket serves.
type face int

const (
	faceHost face = iota
	faceControl
	faceConsole // the operator console's Unix socket (console.go)
	faceMetrics // the metrics endpoint's Unix socket (metrics.go)
)

func (f face) String() string {
	switch f {
	case faceControl:
		return "control"
	case faceConsole:
		return "console"
	case faceMetrics:
		return "metrics"
	}
	return "host"
}

// peer is who is on the other end of a connection, as the kernel says
// (SO_PEERCRED, SO_PEERGROUPS): the credentials at connect time.
type peer struct {
	pid    int32
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups
}

// peerOf reads the credentials of c's peer.
func peerOf(c *net.UnixConn) (peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return peer{}, err
	}
	var p peer
	var serr error
	err = rc.Control(func(fd uintptr) {
		var cred *unix.Ucred
		if cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); serr != nil {
			return
		}
		p.pid, p.uid, p.gid = cred.Pid, cred.Uid, cred.Gid
		p.groups, serr = peerGroups(int(fd))
	})
	if err == nil {
		err = serr
	}
	return p, err
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// it is too small.
func peerGroups(fd int) ([]uint32, error) {
	n := 64
	for {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			return buf[:size/4], nil
		case errno == unix.ERANGE && int(size/4) > n:
			n = int(size / 4)
		case errno == unix.ENOPROTOOPT:
			return nil, nil // kernels before 4.13: primary group only
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		}
	}
}

// inGroup reports whether gid is the peer's primary or a supplementary
// group.
func (p peer) inGroup(gid uint32) bool {
	return p.gid == gid || slices.Contains(p.groups, gid)
}

// group is a socket's allowed group; set false means none (root and the
// daemon's own user only).
type group struct {
	set  bool
	gid  uint32
	name string // as the operator wrote it, or the name of gid
}

// lookupGroup resolves a --host-group or --operator-group value: a group
// name or a numeric gid. "" is no group.
func lookupGroup(s string) (group, error) {
	if s == "" {
		return group{}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		g := group{set: true, gid: uint32(n), name: s}
		if gr, err := user.LookupGroupId(s); err == nil {
			g.name = gr.Name
		}
		return g, nil
	}
	gr, err := user.LookupGroup(s)
	if err != nil {
		return group{}, fmt.Errorf("group %q: %w", s, err)
	}
	n, err := strconv.ParseUint(gr.Gid, 10, 32)
	if err != nil {
		return group{}, fmt.Errorf("group %q has gid %q", s, gr.Gid)
	}
	return group{set: true, gid: uint32(n), name: s}, nil
}

// errDenied is the kind of every refusal for lack of rights.
var errDenied = errdefs.ErrPermissionDenied

// allow decides whether p may use a socket serving f whose allowed group
// is g: root, the daemon's own user and members of g may.
func allow(f face, g group, p peer) error {
	euid := uint32(os.Geteuid())
	if p.uid == 0 || p.uid == euid || g.set && p.inGroup(g.gid) {
		return nil
	}
	flag := "--host-group"
	if f != faceHost { // the control and console sockets: operators
		flag = "--operator-group"
	}
	if !g.set {
		return fmt.Errorf("%s socket: %w: uid %d is not root and not the daemon's user (uid %d), and the daemon has no %s",
			f, errDenied, p.uid, euid, flag)
	}
	return fmt.Errorf("%s socket: %w: uid %d is not root, not the daemon's user (uid %d) and not in group %q (gid %d, the daemon's %s)",
		f, errDenied, p.uid, euid, g.name, g.gid, flag)
}
