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
	"sync"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/schema"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// server accepts host and CLI connections on the daemon's Unix socket. Its
// accept goroutine and one goroutine per connection end in close.
type server struct {
	d    *Daemon
	ln   *net.UnixListener
	path string

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func listen(d *Daemon, path string, mode os.FileMode) (*server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		// A socket file exists: refuse if a daemon answers on it, else it
		// is left over from a daemon that died.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another dimplugd is already serving %s (stop it or pass a different --socket)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	old := syscall.Umask(0o177) // the socket is never world-accessible, even briefly
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("set socket mode: %w", err)
	}
	s := &server{d: d, ln: ln, path: path, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.d.log.Error("accept", "err", err)
			}
			return
		}
		s.wg.Add(1)
		go func() { // owned by the server; ends when the client disconnects or close
			defer s.wg.Done()
			s.serve(c)
		}()
	}
}

// serve runs one client connection: Cap'n Proto RPC, or the hook lane when
// the client opens with its preamble (see schema/lane.capnp).
func (s *server) serve(c *net.UnixConn) {
	br := bufio.NewReaderSize(c, 64<<10)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	first, err := br.Peek(1)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	bc := &bufferedConn{Conn: c, r: br}
	if first[0] == wire.LanePreamble[0] {
		s.serveLane(bc)
		return
	}
	gw := schema.Daemon_ServerToClient(&gateway{d: s.d})
	conn := wire.NewConn(bc, capnp.Client(gw), rpcLogger{})
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

// FramesPreamble opens a host's frame socket (see schema/stream.capnp).
const FramesPreamble = "DPFRAME1\n"

func (s *server) serveLane(c *bufferedConn) {
	defer c.Close()
	pre := make([]byte, len(wire.LanePreamble))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, pre); err != nil {
		return
	}
	if string(pre) == FramesPreamble[:len(pre)] {
		s.serveFrames(c)
		return
	}
	if string(pre) != wire.LanePreamble {
		return
	}
	c.SetReadDeadline(time.Time{})
	if _, err := io.WriteString(c, wire.LanePreamble); err != nil {
		return
	}
	if !s.track(c, true) {
		return
	}
	defer s.track(c, false)
	_ = wire.ServeLane(s.d.ctx, c, s.d.laneDispatch)
}

// serveFrames hands a host its frame socket: the rest of the preamble, then
// one byte and the socket's fd; the stream connection then closes.
func (s *server) serveFrames(c *bufferedConn) {
	rest := make([]byte, len(FramesPreamble)-len(wire.LanePreamble))
	if _, err := io.ReadFull(c, rest); err != nil || string(rest) != FramesPreamble[len(wire.LanePreamble):] {
		return
	}
	uc, ok := c.Conn.(*net.UnixConn)
	if !ok {
		return
	}
	ours, theirs, err := frames.Socketpair()
	if err != nil {
		s.d.log.Error("frame socket for a host", "err", err)
		return
	}
	defer theirs.Close()
	if err := frames.SendFD(uc, []byte{1}, theirs); err != nil {
		ours.Close()
		return
	}
	s.d.hub.attach(ours, "host", nil)
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
	out := d.dispatch(ctx, ld.Phase(), r, resp)
	dr, err := reply.NewDispatchResult()
	if err != nil {
		return err
	}
	return writeOutcome(dr, out)
}

// bufferedConn reads through the buffer that peeked at the first byte.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (s *server) close() {
	s.ln.Close()
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

// gateway is the bootstrap capability of one client connection.
type gateway struct{ d *Daemon }

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
	return openFace(g, "host", call.Args(), call.AllocResults, func(res schema.Daemon_openHost_Results, client string) error {
		g.d.log.Info("host connected", "client", client)
		return res.SetSession(schema.HostSession_ServerToClient(&hostSession{d: g.d}))
	})
}

func (g *gateway) OpenControl(ctx context.Context, call schema.Daemon_openControl) error {
	return openFace(g, "control", call.Args(), call.AllocResults, func(res schema.Daemon_openControl_Results, _ string) error {
		return res.SetControl(schema.Control_ServerToClient(&control{d: g.d}))
	})
}

// hostSession serves one host's HostSession capability.
type hostSession struct {
	d *Daemon

	mu       sync.Mutex
	watchers []*watcher
}

// Shutdown is called when the host releases the session or disconnects.
func (h *hostSession) Shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.watchers {
		w.stop()
	}
	h.watchers = nil
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
	out := h.d.dispatch(ctx, phase, req, resp)

	results, err := call.AllocResults()
	if err != nil {
		return err
	}
	r, err := results.NewResult()
	if err != nil {
		return err
	}
	return writeOutcome(r, out)
}

func writeOutcome(r schema.DispatchResult, out *outcome) error {
	oc := r.Outcome()
	var err error
	switch out.which {
	case schema.DispatchResult_outcome_Which_continue:
		oc.SetContinue()
	case schema.DispatchResult_outcome_Which_mutateRequest:
		var ms schema.RequestMutation
		if ms, err = oc.NewMutateRequest(); err == nil {
			err = wire.WriteRequestMutation(ms, &out.reqMut)
		}
	case schema.DispatchResult_outcome_Which_respond:
		var rs schema.HttpResponse
		if rs, err = oc.NewRespond(); err == nil {
			err = wire.WriteResponse(rs, out.resp)
		}
	case schema.DispatchResult_outcome_Which_mutateResponse:
		var ms schema.ResponseMutation
		if ms, err = oc.NewMutateResponse(); err == nil {
			err = wire.WriteResponseMutation(ms, &out.respMut)
		}
	case schema.DispatchResult_outcome_Which_failClosed:
		var he schema.HookError
		if he, err = oc.NewFailClosed(); err == nil {
			err = wire.WriteHookError(he, out.fail)
		}
	}
	if err != nil {
		return err
	}
	if len(out.skipped) > 0 {
		l, err := r.NewSkipped(int32(len(out.skipped)))
		if err != nil {
			return err
		}
		for i := range out.skipped {
			if err := wire.WriteHookError(l.At(i), &out.skipped[i]); err != nil {
				return err
			}
		}
	}
	if len(out.applied) > 0 {
		l, err := r.NewApplied(int32(len(out.applied)))
		if err != nil {
			return err
		}
		for i, a := range out.applied {
			if err := l.Set(i, a); err != nil {
				return err
			}
		}
	}
	return nil
}
