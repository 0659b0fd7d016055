package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// server accepts the connections of one of the daemon's sockets: the host
// socket (host face, hook lanes, frame sockets) or the control socket
// (control face). Its accept goroutine and one goroutine per connection end
// in close.
type server struct {
	d        *Daemon
	ln       *net.UnixListener
	path     string
	face     face
	group    group // who besides root and the daemon's user may connect
	cap      int   // connections per peer uid
	lim      wire.Limits
	stop     chan struct{} // closed by stopAccepting: ends the accept loop and its backoff
	stopOnce sync.Once

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	uids    map[uint32]int // open connections by peer uid
	closing bool
	wg      sync.WaitGroup

	refusedAt     time.Time // last refusal logged
	refusedQuiet  int       // refusals not logged since
	lingering     atomic.Int32
	acceptErrs    int
	acceptBackoff time.Duration
}

// listen creates the socket at path, owned by root (or the daemon's user)
// and g's group, with mode, and starts accepting on it. A premade listener
// (socket activation) is served as it is: its maker owns the file, its
// owner, group and mode.
func listen(d *Daemon, f face, path string, mode os.FileMode, g group, inherited *os.File, premade *net.UnixListener) (*server, error) {
	flag := "--socket"
	if f == faceControl {
		flag = "--control-socket"
	}
	ln := premade
	if premade != nil {
		if inherited != nil {
			inherited.Close() // the same socket, made by systemd: premade wins
		}
		if addr := ln.Addr().String(); addr != path {
			ln.Close()
			return nil, fmt.Errorf("the %s socket given is bound to %q, not to %s", f, addr, path)
		}
		ln.SetUnlinkOnClose(false) // the file is its maker's
	} else {
		var err error
		if ln, err = listenSocket(d, f, flag, path, mode, g, inherited); err != nil {
			return nil, err
		}
	}
	s := &server{d: d, ln: ln, path: path, face: f, group: g, stop: make(chan struct{}),
		conns: map[net.Conn]struct{}{}, uids: map[uint32]int{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// listenSocket creates the Unix socket at path (or takes the inherited
// one), owned by root (or the daemon's user) and g's group, with mode: the
// rules of every socket the daemon listens on. flag names the option that
// sets path, for the operator.
func listenSocket(d *Daemon, f face, flag, path string, mode os.FileMode, g group, inherited *os.File) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	var ln *net.UnixListener
	if inherited != nil {
		// Handed over by the daemon this one replaced: the same socket,
		// with the connections made meanwhile waiting in its backlog.
		ln = inheritListener(d, inherited, path)
	}
	if _, err := os.Lstat(path); ln == nil && err == nil {
		// A socket file exists: refuse if a daemon answers on it, else it
		// is left over from a daemon that died.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another dimplugd is already serving %s (stop it or pass a different %s)", path, flag)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	if ln == nil {
		old := syscall.Umask(0o177) // the socket is never world-accessible, even briefly
		var err error
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		syscall.Umask(old)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
	}
	ln.SetUnlinkOnClose(true)
	if g.set {
		if err := os.Chown(path, -1, int(g.gid)); err != nil {
			ln.Close()
			return nil, fmt.Errorf("give the %s socket to group %q: %w", f, g.name, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("set socket mode: %w", err)
	}
	return ln, nil
}

// accept runs until close. A failing accept for lack of resources
// (EMFILE, ENFILE, ENOBUFS...) or a connection gone before it was taken
// never ends it: it backs off from 5 ms, doubling up to 1 s, as net/http
// does, and logs once per burst. Any other failure (the listening socket
// is broken or was closed behind the server's back) ends it and is
// reported through Daemon.Err.
func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.stop:
				return
			default:
			}
			if !acceptRetryable(err) {
				s.d.fail(fmt.Errorf("%s socket %s: accept: %w", s.face, s.path, err))
				return
			}
			if s.acceptBackoff == 0 {
				s.acceptBackoff = 5 * time.Millisecond
				s.d.log.Error("accept failed; retrying with backoff until it succeeds", "socket", s.face.String(), "err", err)
			} else {
				s.acceptBackoff = min(2*s.acceptBackoff, time.Second)
			}
			s.acceptErrs++
			t := time.NewTimer(s.acceptBackoff)
			select {
			case <-t.C:
			case <-s.stop:
				t.Stop()
				return
			}
			continue
		}
		if s.acceptBackoff != 0 {
			s.d.log.Info("accept works again", "socket", s.face.String(), "failed_accepts", s.acceptErrs)
			s.acceptBackoff, s.acceptErrs = 0, 0
		}
		s.admit(c)
	}
}

// acceptRetryable tells a failed accept that may work later (resources
// run out, a connection reset before it was taken, a signal) from one that
// never will.
func acceptRetryable(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// admit checks a new connection's peer against the socket's rights and
// caps, then serves it on its own goroutine, or refuses it.
func (s *server) admit(c *net.UnixConn) {
	p, err := peerOf(c)
	if err != nil {
		s.d.log.Warn("connection refused: cannot read its peer's credentials", "socket", s.face.String(), "err", err)
		c.Close()
		return
	}
	if err := allow(s.face, s.group, p); err != nil {
		s.refuse(c, p, err)
		return
	}
	if err := s.take(p.uid); err != nil {
		s.refuse(c, p, err)
		return
	}
	s.wg.Add(1)
	go func() { // owned by the server; ends when the client disconnects or close
		defer s.wg.Done()
		defer s.give(p.uid)
		s.serve(c, p)
	}()
}

// take counts a connection of uid against the caps.
func (s *server) take(uid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.d.limits().HostConnsPerUID
	if s.face == faceControl {
		limit = s.d.limits().ControlConnsPerUID
	}
	if s.uids[uid] >= limit {
		flag := "--host-conns-per-uid"
		if s.face == faceControl {
			flag = "--control-conns-per-uid"
		}
		return fmt.Errorf("%s socket: too many connections: uid %d already has %d open (the cap per uid, %s)", s.face, uid, s.uids[uid], flag)
	}
	if n := s.d.openConns.Add(1); n > int64(s.d.limits().MaxConns) {
		s.d.openConns.Add(-1)
		return fmt.Errorf("%s socket: too many connections: the daemon has %d open (the cap, --max-conns)", s.face, n-1)
	}
	s.uids[uid]++
	return nil
}

func (s *server) give(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.openConns.Add(-1)
	if s.uids[uid]--; s.uids[uid] <= 0 {
		delete(s.uids, uid)
	}
}

// maxLingering bounds the refused connections kept open briefly so that
// their peers read why; beyond it refusals close at once.
const maxLingering = 64

// refuse tells the peer why (a Cap'n Proto abort message, which the SDK
// reports) and closes the connection. It logs at most once a second.
func (s *server) refuse(c *net.UnixConn, p peer, why error) {
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.refusedAt) >= time.Second {
		s.d.log.Warn("connection refused", "socket", s.face.String(), "uid", p.uid, "pid", p.pid, "err", why,
			"also_refused_since_last_logged", s.refusedQuiet)
		s.refusedAt, s.refusedQuiet = now, 0
	} else {
		s.refusedQuiet++
	}
	s.mu.Unlock()
	c.SetWriteDeadline(now.Add(100 * time.Millisecond))
	_, _ = c.Write(abortMessage(why.Error()))
	if s.lingering.Add(1) > maxLingering {
		s.lingering.Add(-1)
		c.Close()
		return
	}
	// Half-close and drain what the peer already sent, so that it reads
	// the abort rather than a reset.
	c.CloseWrite()
	s.wg.Add(1)
	go func() { // ends within a second
		defer s.wg.Done()
		defer s.lingering.Add(-1)
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))
		c.Close()
	}()
}

// abortMessage is a Cap'n Proto RPC abort carrying reason.
func abortMessage(reason string) []byte {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		return nil
	}
	e, err := m.NewAbort()
	if err != nil {
		return nil
	}
	e.SetType(rpccp.Exception_Type_failed)
	if e.SetReason(reason) != nil {
		return nil
	}
	b, _ := msg.Marshal()
	return b
}

// serve runs one client connection: Cap'n Proto RPC, or (host socket only)
// the hook lane or the frame socket when the client opens with their
// preamble (see schema/lane.capnp).
func (s *server) serve(c *net.UnixConn, p peer) {
	br := bufio.NewReaderSize(c, 4<<10)
	c.SetReadDeadline(time.Now().Add(s.d.limits().FirstMessageTimeout))
	first, err := br.Peek(1)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	bc := &bufferedConn{Conn: c, r: br}
	if first[0] == wire.LanePreamble[0] {
		if s.face != faceHost {
			s.d.log.Warn("control socket: a hook lane or frame socket was asked for; hosts use the host socket", "uid", p.uid, "pid", p.pid)
			c.Close()
			return
		}
		s.serveLane(bc, p)
		return
	}
	gw := schema.Daemon_ServerToClient(&gateway{d: s.d, face: s.face, peer: p})
	conn := wire.NewConnLimited(bc, capnp.Client(gw), rpcLogger{}, s.d.wireLimits(s.face))
	if !s.track(bc, true) {
		conn.Close()
		return
	}
	defer s.track(bc, false)
	<-conn.Done()
}

// track records open connections so that close can end them. Once the
// server is closing it refuses new ones (and closes them).
func (s *server) track(c net.Conn, open bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !open {
		delete(s.conns, c)
		return true
	}
	if s.closing {
		c.Close()
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// laneSet counts the host lanes being served, so that a drain can wait
// for them to say goodbye.
type laneSet struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; nil if nobody waits
}

func (l *laneSet) add() {
	l.mu.Lock()
	l.n++
	l.mu.Unlock()
}

func (l *laneSet) done() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n--; l.n == 0 && l.zero != nil {
		close(l.zero)
		l.zero = nil
	}
}

// idle returns a channel closed once no lane is served.
func (l *laneSet) idle() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.zero == nil {
		l.zero = make(chan struct{})
		if l.n == 0 {
			close(l.zero)
			c := l.zero
			l.zero = nil
			return c
		}
	}
	return l.zero
}

// serveLane serves a connection that opened with a preamble: the hook lane
// or the frame socket of an open host session (wire.LanePreamble,
// wire.FramesPreamble). Anything else is closed without a word, but an
// older preamble version is told which versions the daemon speaks.
func (s *server) serveLane(c *bufferedConn, p peer) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(s.d.limits().FirstMessageTimeout))
	pre := make([]byte, preambleLen)
	if _, err := io.ReadFull(c, pre); err != nil {
		return
	}
	var token []byte
	readToken := func() bool {
		token = make([]byte, wire.TokenLen)
		_, err := io.ReadFull(c, token)
		return err == nil
	}
	switch string(pre) {
	case wire.LanePreamble:
		if !readToken() {
			return
		}
	case wire.FramesPreamble[:preambleLen]:
		nl := make([]byte, len(wire.FramesPreamble)-preambleLen)
		if _, err := io.ReadFull(c, nl); err != nil || string(nl) != wire.FramesPreamble[preambleLen:] || !readToken() {
			return
		}
	case "DPLANE1\n", "DPFRAME1":
		s.refusePreamble(c, p, fmt.Sprintf("this host opened with %q, a version dimplugd no longer speaks: it speaks %q and %q, each followed by the session token from openHost (docs/host-protocol.md); update the host's dimplugd library",
			strings.TrimSpace(string(pre)), strings.TrimSpace(wire.LanePreamble), strings.TrimSpace(wire.FramesPreamble)))
		return
	default:
		return
	}
	c.SetReadDeadline(time.Time{})
	h, why := s.d.hostSessions.lookup(token, p.uid)
	if h == nil {
		s.refusePreamble(c, p, why)
		return
	}
	if string(pre) == wire.LanePreamble {
		s.serveHostLane(c, h)
	} else {
		s.serveFrames(c, p, h)
	}
}

// refusePreamble answers a preamble with wire.PreambleRefused and why.
func (s *server) refusePreamble(c net.Conn, p peer, why string) {
	s.d.log.Warn("host connection refused", "uid", p.uid, "pid", p.pid, "why", why)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(append([]byte{wire.PreambleRefused}, why...))
}

// serveHostLane serves session h's hook lane on c until either ends.
func (s *server) serveHostLane(c *bufferedConn, h *hostSession) {
	if !h.tie(c, nil) {
		return
	}
	defer h.untie(c)
	if _, err := c.Write([]byte{wire.PreambleOK}); err != nil {
		return
	}
	if !s.track(c, true) {
		return
	}
	defer s.track(c, false)
	lim := s.d.wireLimits(s.face)
	lim.FirstMessage = 0 // the preamble was the first message
	s.d.lanes.add()
	defer s.d.lanes.done()
	_ = wire.ServeLaneLimited(s.d.ctx, c, s.d.laneDispatch, lim, s.d.goodbye)
}

// serveFrames hands session h its frame socket: wire.PreambleOK and the
// socket's fd; the stream connection then closes. A uid with
// HostConnsPerUID frame sockets open already is refused. The socket is
// closed when the session ends.
func (s *server) serveFrames(c *bufferedConn, p peer, h *hostSession) {
	uc, ok := c.Conn.(*net.UnixConn)
	if !ok {
		return
	}
	if !s.d.hub.reserveHost(p.uid, s.d.limits().HostConnsPerUID) {
		s.refusePreamble(c, p, fmt.Sprintf("too many frame sockets: uid %d already has %d open (the cap per uid, --host-conns-per-uid)", p.uid, s.d.limits().HostConnsPerUID))
		return
	}
	ours, theirs, err := frames.Socketpair()
	if err != nil {
		s.d.hub.unreserveHost(p.uid)
		s.d.log.Error("frame socket for a host", "err", err)
		return
	}
	defer theirs.Close()
	if err := frames.SendFD(uc, []byte{wire.PreambleOK}, theirs); err != nil {
		s.d.hub.unreserveHost(p.uid)
		ours.Close()
		return
	}
	fp := s.d.hub.attachHost(ours, p.uid)
	if !h.tie(ours, fp.goneCh) {
		ours.Close() // the session ended meanwhile: the peer's reader ends
	}
}

// laneDispatch answers a dispatch call on a host's hook lane.
func (d *Daemon) laneDispatch(ctx context.Context, req, reply schema.LaneFrame) error {
	if req.Which() != schema.LaneFrame_Which_dispatch {
		return fmt.Errorf("hook lane: unexpected %s frame", req.Which())
	}
	d.dispatches.Add(1)
	ld, err := req.Dispatch()
	if err != nil {
		return err
	}
	rq, err := ld.Request()
	if err != nil {
		return err
	}
	r, err := wire.ReadRequest(rq)
	if err != nil {
		return err
	}
	var resp *wire.Response
	if p := ld.Phase(); p == schema.Phase_response || p == schema.Phase_observe {
		rs, err := ld.Response()
		if err != nil {
			return err
		}
		if resp, err = wire.ReadResponse(rs); err != nil {
			return err
		}
	}
	out, err := d.dispatch(ctx, ld.Phase(), r, resp)
	if err != nil {
		return err
	}
	dr, err := reply.NewDispatchResult()
	if err != nil {
		return err
	}
	return wire.WriteOutcome(dr, out)
}

// bufferedConn reads through the buffer that peeked at the first byte.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// stopAccepting closes the listener (and ends the accept loop); the
// connections already open go on. It is the first step of close.
// inheritListener returns the listening socket handed over in f if it is
// a Unix stream socket bound to path, else nil (f is closed either way).
func inheritListener(d *Daemon, f *os.File, path string) *net.UnixListener {
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		d.log.Warn("handed-over socket unusable; listening afresh", "socket", path, "err", err)
		return nil
	}
	ul, ok := l.(*net.UnixListener)
	if !ok || ul.Addr().String() != path {
		d.log.Warn("handed-over socket is not the one configured; listening afresh", "socket", path, "got", l.Addr().String())
		l.Close()
		return nil
	}
	ul.SetUnlinkOnClose(false) // the path is ours; it must not go if we give up on it
	return ul
}

// keepListener duplicates the listening socket for the daemon image that
// replaces this one and makes sure closing it leaves the socket file.
func (s *server) keepListener() (int, error) {
	fd, err := keepAcrossExec(s.ln)
	if err != nil {
		return -1, fmt.Errorf("keep the %s socket: %w", s.face, err)
	}
	s.ln.SetUnlinkOnClose(false)
	return fd, nil
}

func (s *server) stopAccepting() {
	s.stopOnce.Do(func() {
		close(s.stop) // first: the accept loop must see it was asked to end
		s.ln.Close()
	})
}

func (s *server) close() {
	s.stopAccepting()
	s.mu.Lock()
	s.closing = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
}

// gateway is the bootstrap capability of one client connection. It opens
// only the face its socket serves.
type gateway struct {
	d    *Daemon
	face face
	peer peer
}

// wrongSocket refuses a face asked for on the other face's socket.
func (g *gateway) wrongSocket(want face) error {
	g.d.log.Warn("client refused: face asked for on the wrong socket", "face", want.String(), "socket", g.face.String(), "uid", g.peer.uid, "pid", g.peer.pid)
	if want == faceControl {
		return fmt.Errorf("control face: %w: this is dimplugd's host socket, which serves hosts only; operators use the control socket %s (dimplugctl --socket, $DIMPLUGD_CONTROL_SOCKET)",
			errDenied, g.d.cfg.ControlSocket)
	}
	return fmt.Errorf("host face: %w: this is dimplugd's control socket, which serves operators only; hosts use the host socket %s ($DIMPLUGD_SOCKET)",
		errDenied, g.d.cfg.Socket)
}

// openFace negotiates the version of a face for a client and, when they
// share one, lets grant set the face's capability in the results.
func openFace[A interface {
	Versions() (capnp.UInt16List, error)
	Client() (string, error)
}, R interface {
	NewDaemonVersions(int32) (capnp.UInt16List, error)
	SetVersion(uint16)
}](g *gateway, face string, args A, alloc func() (R, error), grant func(R, string) error) error {
	offered, err := wire.ReadVersions(args.Versions())
	if err != nil {
		return err
	}
	client, _ := args.Client()
	res, err := alloc()
	if err != nil {
		return err
	}
	if err := wire.WriteVersions(res.NewDaemonVersions, g.d.versions); err != nil {
		return err
	}
	v, err := schema.Negotiate(face, "the daemon", fmt.Sprintf("%s client %q", face, client), g.d.versions, offered)
	if err != nil {
		// Version 0 tells the client, which reports both lists.
		g.d.log.Warn("client refused", "face", face, "client", client, "err", err)
		return nil
	}
	res.SetVersion(v)
	return grant(res, client)
}

func (g *gateway) OpenHost(ctx context.Context, call schema.Daemon_openHost) error {
	if g.face != faceHost {
		return g.wrongSocket(faceHost)
	}
	return openFace(g, "host", call.Args(), call.AllocResults, func(res schema.Daemon_openHost_Results, client string) error {
		h := &hostSession{d: g.d, uid: g.peer.uid}
		if err := g.d.hostSessions.add(h); err != nil {
			return err
		}
		if err := res.SetSessionToken(h.token[:]); err != nil {
			g.d.hostSessions.remove(h)
			return err
		}
		g.d.log.Info("host connected", "client", client)
		return res.SetSession(schema.HostSession_ServerToClient(h))
	})
}

func (g *gateway) OpenControl(ctx context.Context, call schema.Daemon_openControl) error {
	if g.face != faceControl {
		return g.wrongSocket(faceControl)
	}
	return openFace(g, "control", call.Args(), call.AllocResults, func(res schema.Daemon_openControl_Results, _ string) error {
		return res.SetControl(schema.Control_ServerToClient(&control{d: g.d}))
	})
}

// hostSession serves one host's HostSession capability. Its token ties
// the host's hook lane and frame socket to it (hostsessions.go).
type hostSession struct {
	d     *Daemon
	uid   uint32
	token sessionToken

	mu       sync.Mutex
	watchers []*watcher
	tied     map[io.Closer]<-chan struct{} // connections to close at the end
	ended    bool
}

// Shutdown is called when the host releases the session or disconnects:
// its token stops working and its lane and frame socket are closed.
func (h *hostSession) Shutdown() {
	h.d.hostSessions.remove(h)
	h.mu.Lock()
	h.ended = true
	for _, w := range h.watchers {
		w.stop()
	}
	h.watchers = nil
	tied := h.tied
	h.tied = nil
	h.mu.Unlock()
	for c := range tied {
		c.Close()
	}
}

func (h *hostSession) Routes(ctx context.Context, call schema.HostSession_routes) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	tb, err := res.NewTable()
	if err != nil {
		return err
	}
	return writeTable(tb, h.d.routes.cur.Load(), h.d.sup)
}

func (h *hostSession) WatchRoutes(ctx context.Context, call schema.HostSession_watchRoutes) error {
	c := call.Args().Watcher()
	if !c.IsValid() {
		return errors.New("watchRoutes: watcher is null")
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	tb, err := res.NewTable()
	if err != nil {
		return err
	}
	t := h.d.routes.cur.Load()
	if err := writeTable(tb, t, h.d.sup); err != nil {
		return err
	}
	w := h.d.addWatcher(c.AddRef(), t.version)
	h.mu.Lock()
	h.watchers = append(h.watchers, w)
	h.mu.Unlock()
	return nil
}

func (h *hostSession) Dispatch(ctx context.Context, call schema.HostSession_dispatch) error {
	call.Go() // requests are independent; serve them concurrently
	h.d.dispatches.Add(1)
	args := call.Args()
	rq, err := args.Request()
	if err != nil {
		return err
	}
	req, err := wire.ReadRequest(rq)
	if err != nil {
		return err
	}
	phase := args.Phase()
	var resp *wire.Response
	if phase == schema.Phase_response || phase == schema.Phase_observe {
		rs, err := args.Response()
		if err != nil {
			return err
		}
		if resp, err = wire.ReadResponse(rs); err != nil {
			return err
		}
	}
	out, err := h.d.dispatch(ctx, phase, req, resp)
	if err != nil {
		return err
	}

	results, err := call.AllocResults()
	if err != nil {
		return err
	}
	r, err := results.NewResult()
	if err != nil {
		return err
	}
	return wire.WriteOutcome(r, out)
}
