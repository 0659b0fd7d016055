// Package host is what a Go host (Dim's Go-side tooling, the example
// dimhost, tests) imports to use dimplugd: Dial opens a session on the
// daemon's host socket (DefaultSocket) to read the route table and dispatch
// hooks; DialControl opens the operator's control face (install, list,
// enable, ...) on the daemon's control socket (DefaultControlSocket).
//
// This package must not import the daemon, the sandbox or cobra.
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
	"sync/atomic"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Request, Response and the mutations are the HTTP exchange in Go form.
type (
	Request          = wire.Request
	Response         = wire.Response
	RequestMutation  = wire.RequestMutation
	ResponseMutation = wire.ResponseMutation
	HookError        = wire.HookError
	Phase            = wire.Phase
)

// The hook phases.
const (
	PhaseRequest  = wire.PhaseRequest
	PhaseResponse = wire.PhaseResponse
	PhaseRoute    = wire.PhaseRoute
	PhaseObserve  = wire.PhaseObserve
)

// Option configures Dial and DialControl.
type Option func(*options)

type options struct {
	client   string
	versions []uint16
	noLane   bool
	noDirect bool
	degraded bool   // Dial returns even when the daemon is not there yet
	cache    string // route table cache file ("": none)
}

// WithStartDegraded lets Dial return at once when the daemon is not
// running (its socket is missing or refuses connections): the session
// connects in the background as soon as the daemon is up. Until then it
// dispatches by the last route table it knows (see WithRouteCache):
// fail-closed hooks answer 503 naming the daemon, fail-open ones are
// skipped, other routes are untouched. Without a cached table it knows no
// hook, so every request passes untouched until the daemon answers.
func WithStartDegraded() Option { return func(o *options) { o.degraded = true } }

// WithRouteCache keeps the newest route table in file (written atomically
// on every change), and starts from it: a host restarted while the daemon
// is down still applies its hooks' failure policies.
func WithRouteCache(file string) Option { return func(o *options) { o.cache = file } }

// WithoutDirectLanes makes every dispatch go through the daemon, even when
// a phase has a single hook that could be called directly.
func WithoutDirectLanes() Option { return func(o *options) { o.noDirect = true } }

// WithoutLane makes the session dispatch over Cap'n Proto RPC only, without
// opening the hook lane (schema/lane.capnp). Results are the same; the lane
// is faster.
func WithoutLane() Option { return func(o *options) { o.noLane = true } }

// WithClientName names the host in the daemon's log ("dim 0.4.0").
func WithClientName(name string) Option { return func(o *options) { o.client = name } }

// WithProtocolVersions overrides the protocol versions offered; only tests
// need it.
func WithProtocolVersions(vs ...uint16) Option { return func(o *options) { o.versions = vs } }

func buildOptions(opts []Option) options {
	o := options{client: "dimplugd-sdk-go host", versions: schema.SupportedVersions}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// dial connects to one of the daemon's sockets (face "host" or "control")
// and returns the connection, its bootstrap capability and what catches the
// daemon's reason when it refuses the connection.
func dial(ctx context.Context, face, socket string) (*rpc.Conn, schema.Daemon, *abortCatcher, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, schema.Daemon{}, nil, dialError(face, socket, err)
	}
	ac := &abortCatcher{}
	conn := wire.NewConn(c, capnp.Client{}, ac)
	return conn, schema.Daemon(conn.Bootstrap(ctx)), ac, nil
}

// dialError explains a failed connect.
func dialError(face, socket string, err error) error {
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		who := "hosts must run as root, as the daemon's user or in the daemon's --host-group"
		if face == "control" {
			who = "operators must run as root, as the daemon's user or in the daemon's --operator-group"
		}
		return errdefs.New(errdefs.ErrPermissionDenied, fmt.Sprintf("dimplugd: %s socket %s: permission denied for uid %d: %s", face, socket, os.Geteuid(), who))
	}
	return errdefs.WithClass(fmt.Errorf("connect to dimplugd's %s socket at %s: %w (is the daemon running? start it with: dimplugd serve)", face, socket, err), errdefs.ErrUnavailable)
}

// abortCatcher is a connection's logger: it keeps the reason of an abort
// from the daemon (sent when it refuses a connection) and drops the rest.
type abortCatcher struct {
	mu     sync.Mutex
	reason string
}

func (a *abortCatcher) Debug(string, ...any) {}
func (a *abortCatcher) Info(string, ...any)  {}
func (a *abortCatcher) Warn(string, ...any)  {}
func (a *abortCatcher) Error(msg string, _ ...any) {
	const mark = "remote abort: "
	if i := strings.Index(msg, mark); i >= 0 {
		a.mu.Lock()
		a.reason = msg[i+len(mark):]
		a.mu.Unlock()
	}
}

// refusal is the daemon's reason for refusing the connection, waiting a
// moment for conn to end when it has not yet; "" when it did not refuse.
func (a *abortCatcher) refusal(conn *rpc.Conn) string {
	select {
	case <-conn.Done():
	case <-time.After(200 * time.Millisecond):
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reason
}

// Session is a host's connection to the daemon. It is safe for concurrent
// use; one session serves any number of requests in flight.
//
// It outlives the daemon: when the connection ends (a restart, an upgrade,
// a crash), a keeper goroutine redials with backoff (50 ms doubling to 2 s),
// redoes the handshake, fetches the route table again and reopens the hook
// lane; direct lanes and frame sockets are asked for again on first use.
// While the daemon is away, Dispatch answers by each hook's policy at once
// (see Dispatch). The keeper ends with Close.
type Session struct {
	socket string
	opts   options

	link   atomic.Pointer[link]       // nil while the daemon is away
	routes atomic.Pointer[RouteTable] // pushed by the daemon; kept while it is away
	// links numbers the session's connections: table versions compare
	// only within one (each daemon process numbers its own).
	links atomic.Uint64
	// attempt is closed when the keeper's connect attempt under way ends;
	// nil between attempts (see awaitLink).
	attempt atomic.Pointer[connectAttempt]

	mu       sync.Mutex
	watchers []func(*RouteTable)
	direct   map[string]*directLane // by plugin; see direct.go
	noDirect bool
	closed   bool
	frames   *frameClient // of the current link, opened by the first OpenStream or lane

	stop       chan struct{} // closed by Close
	stopCtx    context.Context
	cancel     context.CancelFunc // ends stopCtx: a reconnect under way gives up
	keeperDone chan struct{}
	reconnects atomic.Int64
	version    atomic.Uint32 // of the newest link

	statsOnce            sync.Once
	statsStop, statsDone chan struct{} // the direct-call stats reporter

	// Direct observers (direct.go): each plugin's queue, what they hold,
	// and their goroutines, which Close waits for.
	observeQ          map[string]*wire.CallQueue // by plugin; under mu
	observedViaDaemon map[string]bool            // by plugin; under mu
	observeBytes      atomic.Int64
	observePending    atomic.Int64 // direct observe calls queued or in flight
	observing         sync.WaitGroup
}

// link is one connection to one daemon: the RPC session and its hook lane.
type link struct {
	conn    *rpc.Conn
	s       schema.HostSession
	version uint16
	token   []byte // the session's token: opens its hook lane and frame socket
	// lane is the hook lane; nil: dispatch over RPC. A lane that breaks
	// while the RPC connection lives on is replaced in the background
	// (laneBroke); reopening ends with the link.
	lane atomic.Pointer[wire.LaneClient]
	// reopening counts the goroutine that reopens a broken lane. mu and
	// closed order its Add against close's Wait: once close has begun, no
	// new reopener starts.
	reopening sync.WaitGroup
	mu        sync.Mutex
	closed    bool

	// next is closed when the keeper's first connect attempt after this
	// link ended has ended itself (see awaitNext).
	next     chan struct{}
	nextOnce sync.Once
}

// nextDone marks the first connect attempt after l ended; nil-safe.
func (l *link) nextDone() {
	if l != nil {
		l.nextOnce.Do(func() { close(l.next) })
	}
}

// gone reports whether the link's connection has ended.
func (l *link) gone() bool {
	select {
	case <-l.conn.Done():
		return true
	default:
		return false
	}
}

func (l *link) close() {
	l.s.Release()
	l.conn.Close()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.reopening.Wait() // it sees conn.Done and stops
	if lane := l.lane.Swap(nil); lane != nil {
		lane.Close()
	}
}

// laneBroke takes a hook lane that ended under a call while the link's RPC
// connection lives on (the daemon cut the lane: a message over its size
// limit, a write that stalled): later calls go over RPC at once, and a new
// lane is opened in the background, with backoff, until the link ends.
func (l *link) laneBroke(s *Session, lane *wire.LaneClient) {
	if !l.lane.CompareAndSwap(lane, nil) {
		return // already replaced
	}
	lane.Close()
	if s.opts.noLane || l.gone() {
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.reopening.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.reopening.Done()
		wait := redialFirst
		for {
			select {
			case <-l.conn.Done():
				return
			case <-s.stop:
				return
			case <-time.After(wait):
			}
			ctx, cancel := context.WithTimeout(s.stopCtx, 5*time.Second)
			nl, err := openLane(ctx, s.socket, l.token)
			cancel()
			if err == nil {
				l.lane.Store(nl)
				if l.gone() { // close may have run its Swap already
					if lane := l.lane.Swap(nil); lane != nil {
						lane.Close()
					}
				}
				return
			}
			wait = min(2*wait, redialMax)
		}
	}()
}

// Dial opens a host session on the daemon's host socket (DefaultSocket,
// `dimplugd serve --socket`) and negotiates the protocol version. The
// session reconnects by itself whenever the daemon goes away; with
// WithStartDegraded it does not even need the daemon to be up yet.
func Dial(ctx context.Context, socket string, opts ...Option) (*Session, error) {
	o := buildOptions(opts)
	sess := &Session{socket: socket, opts: o, direct: map[string]*directLane{}, observeQ: map[string]*wire.CallQueue{}, observedViaDaemon: map[string]bool{}, noDirect: o.noLane || o.noDirect,
		stop: make(chan struct{}), keeperDone: make(chan struct{})}
	sess.stopCtx, sess.cancel = context.WithCancel(context.Background())
	if o.cache != "" {
		if t, err := loadRoutes(o.cache); err == nil {
			sess.routes.Store(t)
		}
	}
	l, err := sess.connect(ctx)
	switch {
	case err == nil:
		sess.link.Store(l)
	case o.degraded && daemonAbsent(err):
		l = nil // the keeper connects when the daemon comes
	default:
		sess.cancel()
		return nil, err
	}
	go func() { // the keeper; ends with Close
		defer close(sess.keeperDone)
		sess.keep(l)
	}()
	return sess, nil
}

// daemonAbsent reports whether a failed connect means that no daemon is
// listening (yet), rather than one refusing this host.
func daemonAbsent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// connect dials the daemon, negotiates, fetches the route table (replacing
// whatever the session knew: a new daemon numbers its tables anew) and
// opens the hook lane.
func (s *Session) connect(ctx context.Context) (*link, error) {
	conn, boot, ac, err := dial(ctx, "host", s.socket)
	if err != nil {
		return nil, err
	}
	defer boot.Release()
	fut, release := boot.OpenHost(ctx, func(p schema.Daemon_openHost_Params) error { return offer(p, s.opts) })
	defer release()
	res, err := negotiated("host", "this host", s.opts, conn, ac, fut)
	if err != nil {
		return nil, err
	}
	token, err := res.SessionToken()
	if err != nil {
		return nil, fmt.Errorf("openHost: %w", err)
	}
	l := &link{conn: conn, s: res.Session().AddRef(), version: res.Version(), token: bytes.Clone(token), next: make(chan struct{})}
	if err := s.watch(ctx, l); err != nil {
		l.close()
		return nil, err
	}
	if !s.opts.noLane {
		// A daemon without the lane closes the connection; dispatch
		// then stays on RPC.
		if lane, err := openLane(ctx, s.socket, l.token); err == nil {
			l.lane.Store(lane)
		}
	}
	s.version.Store(uint32(l.version))
	return l, nil
}

// Reconnect backoff.
const (
	redialFirst = 50 * time.Millisecond
	redialMax   = 2 * time.Second
)

// keep watches the current link and, when it ends, connects again until
// it succeeds or the session closes.
func (s *Session) keep(l *link) {
	for {
		var done *connectAttempt
		var old *link // the link whose end this round follows
		if l != nil {
			select {
			case <-l.conn.Done():
			case <-s.stop:
				return
			}
			done = s.beginAttempt() // the first try, at once, starts now
			s.lost(l)
			old = l
		}
		wait := time.Duration(0) // the first try is at once
		for {
			if wait > 0 {
				select {
				case <-s.stop:
					s.endAttempt(done)
					old.nextDone()
					return
				case <-time.After(wait):
				}
			}
			if done == nil {
				done = s.beginAttempt()
			}
			ctx, cancel := context.WithTimeout(s.stopCtx, 5*time.Second)
			nl, err := s.connect(ctx)
			cancel()
			if err == nil {
				l = nl
				break
			}
			s.endAttempt(done)
			old.nextDone()
			done = nil
			wait = min(max(2*wait, redialFirst), redialMax)
		}
		s.mu.Lock()
		closed := s.closed
		if !closed {
			s.link.Store(l)
		}
		s.mu.Unlock()
		s.endAttempt(done) // after the link is in place: waiters find it
		old.nextDone()
		if closed {
			l.close()
			return
		}
		s.reconnects.Add(1)
	}
}

// connectAttempt is one of the keeper's attempts to connect; done is
// closed when it ends.
type connectAttempt struct{ done chan struct{} }

// beginAttempt marks a connect attempt under way.
func (s *Session) beginAttempt() *connectAttempt {
	a := &connectAttempt{done: make(chan struct{})}
	s.attempt.Store(a)
	return a
}

// endAttempt marks attempt a ended.
func (s *Session) endAttempt(a *connectAttempt) {
	if a == nil {
		return
	}
	s.attempt.CompareAndSwap(a, nil)
	close(a.done)
}

// attemptWait bounds how long a dispatch waits for a connect attempt under
// way.
const attemptWait = time.Second

// awaitLink waits for the connect attempt under way, if there is one, and
// returns the link it made, or nil. An attempt lasts only as long as the
// daemon's socket takes to answer: nothing listening (the daemon stopped or
// died) fails it at once, while a socket that accepts — as it does while
// the daemon upgrades in place, handing its listening socket to the new
// binary — holds the call until the new daemon serves it, at most
// attemptWait or the call's context.
func (s *Session) awaitLink(ctx context.Context) *link {
	a := s.attempt.Load()
	if a == nil {
		return nil
	}
	t := time.NewTimer(attemptWait)
	defer t.Stop()
	select {
	case <-a.done:
	case <-ctx.Done():
	case <-t.C:
	case <-s.stop:
	}
	return s.link.Load()
}

// awaitNext waits, after old answered wire.ErrStopping, for old to end
// and the keeper's next connect attempt to end, and returns the link it
// made, or nil; at most attemptWait or the call's context in all.
func (s *Session) awaitNext(ctx context.Context, old *link) *link {
	t := time.NewTimer(attemptWait)
	defer t.Stop()
	select {
	case <-old.next:
	case <-ctx.Done():
	case <-t.C:
	case <-s.stop:
	}
	if l := s.link.Load(); l != old {
		return l
	}
	return nil
}

// lost forgets a link that ended: dispatch follows the hooks' policies
// until the keeper has a new one; the frame socket and direct lanes of the
// old daemon are dropped (their streams end with an error saying so).
func (s *Session) lost(l *link) {
	s.link.CompareAndSwap(l, nil)
	l.close()
	s.dropFrames()
}

// dropFrames closes the session's frame socket, if it has one.
func (s *Session) dropFrames() {
	s.mu.Lock()
	fc := s.frames
	s.frames = nil
	s.mu.Unlock()
	if fc != nil {
		fc.close()
	}
}

// Connected reports whether the session is connected to the daemon now.
func (s *Session) Connected() bool { return s.link.Load() != nil }

// Reconnects counts the times the session connected again after losing the
// daemon.
func (s *Session) Reconnects() int64 { return s.reconnects.Load() }

// offer fills the version offer of an openHost or openControl call.
func offer[P interface {
	NewVersions(int32) (capnp.UInt16List, error)
	SetClient(string) error
}](p P, o options) error {
	if err := wire.WriteVersions(p.NewVersions, o.versions); err != nil {
		return err
	}
	return p.SetClient(o.client)
}

// negotiated waits for an openHost or openControl answer and checks that
// the daemon accepted a version; on failure it closes conn.
func negotiated[R interface {
	DaemonVersions() (capnp.UInt16List, error)
	Version() uint16
}, F interface{ Struct() (R, error) }](face, self string, o options, conn *rpc.Conn, ac *abortCatcher, fut F) (R, error) {
	res, err := fut.Struct()
	if err != nil {
		if why := ac.refusal(conn); why != "" {
			conn.Close()
			class, msg := errdefs.FromWire(why)
			if class == nil && strings.Contains(msg, "permission denied") {
				class = errdefs.ErrPermissionDenied // a daemon that does not mark its refusals
			}
			if class == nil {
				return res, fmt.Errorf("dimplugd: %s", msg)
			}
			return res, errdefs.New(class, "dimplugd: "+msg)
		}
		conn.Close()
		return res, fmt.Errorf("open %s session: %w", face, err)
	}
	theirs, err := wire.ReadVersions(res.DaemonVersions())
	if err != nil {
		conn.Close()
		return res, fmt.Errorf("open %s session: %w", face, err)
	}
	if res.Version() == 0 {
		conn.Close()
		_, err := schema.Negotiate(face, self, "the daemon", o.versions, theirs)
		return res, err
	}
	return res, nil
}

// openLane opens a hook lane to the daemon (see schema/lane.capnp).
func openLane(ctx context.Context, socket string, token []byte) (*wire.LaneClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(wire.LanePreambleWithToken(token)); err != nil {
		c.Close()
		return nil, err
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(c, answer); err != nil || answer[0] != wire.PreambleOK {
		why, _ := io.ReadAll(io.LimitReader(c, 4<<10))
		c.Close()
		if err == nil && len(why) > 0 {
			return nil, fmt.Errorf("dimplugd refused the hook lane: %s", termesc.String(string(why)))
		}
		return nil, fmt.Errorf("the daemon does not serve the hook lane")
	}
	c.SetDeadline(time.Time{})
	return wire.NewLaneClient(c), nil
}

// Lane reports whether the session dispatches on the hook lane now.
func (s *Session) Lane() bool {
	l := s.link.Load()
	return l != nil && l.lane.Load() != nil
}

// Version is the protocol version negotiated with the newest daemon.
func (s *Session) Version() uint16 { return uint16(s.version.Load()) }

// Done is closed when the session is closed (not when the daemon goes
// away: the session then reconnects).
func (s *Session) Done() <-chan struct{} { return s.stop }

// Close ends the session and its keeper, after the observations already
// dispatched over direct lanes have been made (a few seconds at most).
func (s *Session) Close() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if !closed {
		s.awaitObservers()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	s.cancel()
	s.mu.Unlock()
	<-s.keeperDone
	s.closeLanes()
	s.dropFrames()
	if l := s.link.Swap(nil); l != nil {
		l.close()
	}
	return nil
}

// ResultKind says what a dispatch decided.
type ResultKind int

// Dispatch outcomes.
const (
	// Continue: no hook changed anything.
	Continue ResultKind = iota
	// MutateRequest: apply Result.RequestMutation, then run the handler.
	MutateRequest
	// Respond: send Result.Response; do not run the handler.
	Respond
	// MutateResponse: apply Result.ResponseMutation before sending.
	MutateResponse
	// FailClosed: a fail-closed hook failed; answer Result.Failure.Status()
	// naming the plugin (see FailureResponse).
	FailClosed
)

// Result is the combined effect of one phase's hooks.
type Result struct {
	Kind             ResultKind
	RequestMutation  RequestMutation
	Response         *Response
	ResponseMutation ResponseMutation
	Failure          *HookError
	// Skipped lists fail-open hooks that failed; the request went on
	// without them.
	Skipped []HookError
	// Applied lists "plugin/hook" for every hook that changed something.
	Applied []string
}

// FailureResponse is the response a host sends for a FailClosed result: 503
// when the plugin was unavailable or too slow, 502 otherwise, with a body
// naming the plugin and the reason.
func (r *Result) FailureResponse() *Response {
	if r.Failure == nil {
		return nil
	}
	body := fmt.Sprintf("request refused: plugin %q (hook %q) %s\n", r.Failure.Plugin, r.Failure.Hook, r.Failure.Message)
	return &Response{
		Status: r.Failure.Status(),
		Header: map[string][]string{"Content-Type": {"text/plain; charset=utf-8"}, "X-Dimplugd-Failed-Plugin": {r.Failure.Plugin}},
		Body:   []byte(body),
	}
}

// Dispatch runs the hooks of phase that match req (resp is read in the
// response and observe phases). An error means the daemon could not be
// asked at all (connection lost, bad input); hook failures are in Result.
//
// While the daemon is away (restarting, upgrading, crashed) Dispatch does
// not wait: it answers by the hooks' policies from the last route table —
// a fail-closed hook (or a route owner) fails the request as unavailable,
// naming the plugin and saying that dimplugd is not reachable; fail-open
// hooks are skipped (Result.Skipped says why). A call cut off by the
// daemon going away is answered the same way. Two cases wait, at most a
// second or ctx: a call made while a reconnect is under way to a socket
// that accepts (an upgrade in place), and a call the stopping daemon says
// it did not start (wire.ErrStopping), which is sent again to the next
// daemon if one comes.
func (s *Session) Dispatch(ctx context.Context, phase Phase, req *Request, resp *Response) (*Result, error) {
	if res, ok := s.dispatchDirect(ctx, phase, req, resp); ok {
		return res, nil
	}
	if phase == PhaseObserve {
		s.beforeDaemonObserve(req)
	}
	l := s.link.Load()
	if l == nil {
		l = s.awaitLink(ctx)
	}
	if l == nil {
		return s.away(phase, req), nil
	}
	res, err := l.dispatch(ctx, s, phase, req, resp)
	if wire.IsStopping(err) {
		// The daemon is draining and did not start the call: send it to
		// the next daemon, if it comes within attemptWait (an upgrade in
		// place), else answer by policy.
		if l = s.awaitNext(ctx, l); l == nil {
			return s.away(phase, req), nil
		}
		res, err = l.dispatch(ctx, s, phase, req, resp)
	}
	if err != nil && ctx.Err() == nil && (l.gone() || connLost(err) || wire.IsStopping(err)) {
		return s.away(phase, req), nil
	}
	return res, err
}

// away answers a phase by its hooks' failure policies, as while the daemon
// is not reachable.
func (s *Session) away(phase Phase, req *Request) *Result {
	t := s.routes.Load()
	if t == nil {
		return &Result{Kind: Continue}
	}
	hooks := t.hooks(phase, req.Method, req.Path)
	unreachable := func(h *RouteHook) *HookError {
		return &HookError{Plugin: h.Plugin, Hook: h.Hook, Kind: schema.HookErrorKind_unavailable,
			Message: "is unavailable: dimplugd is not reachable (the host is reconnecting)"}
	}
	if phase == PhaseObserve { // nobody observes meanwhile
		res := &Result{Kind: Continue}
		for _, h := range hooks {
			res.Skipped = append(res.Skipped, *unreachable(h))
		}
		return res
	}
	wire.SortHooks(phase, hooks, func(h *RouteHook) wire.HookKey {
		return wire.HookKey{Priority: h.Priority, Plugin: h.Plugin, Hook: h.Hook}
	})
	out := wire.RunPhase(phase, hooks,
		func(h *RouteHook) wire.PhaseHook { return wire.PhaseHook{Name: h.name(), FailClosed: h.FailClosed} },
		func(h *RouteHook, _ *Request, _ *Response) (wire.HookAnswer, *wire.HookError) {
			return wire.HookAnswer{}, unreachable(h)
		},
		req, nil)
	return resultOf(&out)
}

// connLost reports whether a dispatch error means the connection to the
// daemon ended under the call.
func connLost(err error) bool {
	return errors.Is(err, wire.ErrLaneClosed) || errors.Is(err, rpc.ErrConnClosed) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// dispatch asks the daemon: on the hook lane, else over RPC. A lane that
// ended under the call is handed to laneBroke; the call itself fails (it
// may or may not have run), and the caller answers it by policy.
func (l *link) dispatch(ctx context.Context, s *Session, phase Phase, req *Request, resp *Response) (*Result, error) {
	fill := func(p interface {
		SetPhase(schema.Phase)
		NewRequest() (schema.HttpRequest, error)
		NewResponse() (schema.HttpResponse, error)
	}) error {
		p.SetPhase(phase)
		rq, err := p.NewRequest()
		if err != nil {
			return err
		}
		if err := wire.WriteRequest(rq, req); err != nil {
			return err
		}
		if resp != nil {
			rs, err := p.NewResponse()
			if err != nil {
				return err
			}
			return wire.WriteResponse(rs, resp)
		}
		return nil
	}
	if lane := l.lane.Load(); lane != nil {
		reply, rf, err := lane.Call(ctx, func(f schema.LaneFrame) error {
			ld, err := f.NewDispatch()
			if err != nil {
				return err
			}
			return fill(ld)
		})
		if err != nil {
			if connLost(err) && !l.gone() {
				l.laneBroke(s, lane)
			}
			return nil, fmt.Errorf("dispatch %s %s: %w", req.Method, req.Path, err)
		}
		defer reply.Release()
		dr, err := rf.DispatchResult()
		if err != nil {
			return nil, fmt.Errorf("dispatch %s %s: %w", req.Method, req.Path, err)
		}
		return readResult(dr)
	}
	fut, release := l.s.Dispatch(ctx, func(p schema.HostSession_dispatch_Params) error { return fill(p) })
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, fmt.Errorf("dispatch %s %s: %w", req.Method, req.Path, err)
	}
	dr, err := res.Result()
	if err != nil {
		return nil, fmt.Errorf("dispatch %s %s: %w", req.Method, req.Path, err)
	}
	return readResult(dr)
}

func readResult(dr schema.DispatchResult) (*Result, error) {
	r := &Result{}
	oc := dr.Outcome()
	var err error
	switch oc.Which() {
	case schema.DispatchResult_outcome_Which_continue:
		r.Kind = Continue
	case schema.DispatchResult_outcome_Which_mutateRequest:
		r.Kind = MutateRequest
		var ms schema.RequestMutation
		if ms, err = oc.MutateRequest(); err == nil {
			r.RequestMutation, err = wire.ReadRequestMutation(ms)
		}
	case schema.DispatchResult_outcome_Which_respond:
		r.Kind = Respond
		var rs schema.HttpResponse
		if rs, err = oc.Respond(); err == nil {
			r.Response, err = wire.ReadResponse(rs)
		}
	case schema.DispatchResult_outcome_Which_mutateResponse:
		r.Kind = MutateResponse
		var ms schema.ResponseMutation
		if ms, err = oc.MutateResponse(); err == nil {
			r.ResponseMutation, err = wire.ReadResponseMutation(ms)
		}
	case schema.DispatchResult_outcome_Which_failClosed:
		r.Kind = FailClosed
		var he schema.HookError
		if he, err = oc.FailClosed(); err == nil {
			e := wire.ReadHookError(he)
			r.Failure = &e
		}
	default:
		err = fmt.Errorf("unknown dispatch outcome %d (is the daemon newer than this host?)", oc.Which())
	}
	if err != nil {
		return nil, err
	}
	if sl, err := dr.Skipped(); err == nil {
		for i := 0; i < sl.Len(); i++ {
			r.Skipped = append(r.Skipped, wire.ReadHookError(sl.At(i)))
		}
	}
	if al, err := dr.Applied(); err == nil {
		for i := 0; i < al.Len(); i++ {
			a, _ := al.At(i)
			r.Applied = append(r.Applied, a)
		}
	}
	return r, nil
}

// RouteTable is a version of the daemon's hooked routes.
type RouteTable struct {
	Version uint64
	link    uint64 // the session connection it came on (Session.links); 0: the cache
	Entries []RouteEntry
	// The daemon's circuit-breaker settings, which direct calls follow.
	BreakerFailures int
	BreakerCooldown time.Duration
}

// RouteEntry is one hooked method and route template.
type RouteEntry struct {
	Method string
	Route  string
	Phases []Phase
	Owner  string // the plugin owning the route, for route-phase entries
	Hooks  []RouteHook

	route manifest.Route
}

// RouteHook is one hook behind a route entry, with its contract.
type RouteHook struct {
	Plugin, Hook string
	Phase        Phase
	Priority     int
	Deadline     time.Duration
	FailClosed   bool

	id string // "plugin/hook", as results name it; made once per table
}

// name is "plugin/hook".
func (h *RouteHook) name() string {
	if h.id == "" {
		return h.Plugin + "/" + h.Hook
	}
	return h.id
}

// Match returns the phases hooked for a request, or nil when none is: such
// a request needs no dispatch at all.
func (t *RouteTable) Match(method, path string) []Phase {
	if t == nil {
		return nil
	}
	var out []Phase
	for i := range t.Entries {
		e := &t.Entries[i]
		if !manifest.MethodMatches(e.Method, method) {
			continue
		}
		if _, ok := e.route.Match(path); !ok {
			continue
		}
		for _, p := range e.Phases {
			if !containsPhase(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

func containsPhase(ps []Phase, p Phase) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// ErrDaemonAway is returned by calls that need the daemon while the session
// is reconnecting to it.
var ErrDaemonAway = errors.New("dimplugd is not reachable (the session is reconnecting)")

// Routes fetches the current route table from the daemon.
func (s *Session) Routes(ctx context.Context) (*RouteTable, error) {
	l := s.link.Load()
	if l == nil {
		return nil, fmt.Errorf("get route table: %w", ErrDaemonAway)
	}
	fut, release := l.s.Routes(ctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, fmt.Errorf("get route table: %w", err)
	}
	t, err := res.Table()
	if err != nil {
		return nil, err
	}
	return readTable(t)
}

func readTable(t schema.RouteTable) (*RouteTable, error) {
	rt := &RouteTable{Version: t.Version(), BreakerFailures: int(t.BreakerFailures()),
		BreakerCooldown: time.Duration(t.BreakerCooldownMicros()) * time.Microsecond}
	l, err := t.Entries()
	if err != nil {
		return nil, err
	}
	for i := 0; i < l.Len(); i++ {
		e := l.At(i)
		method, _ := e.Method()
		route, _ := e.Route()
		owner, _ := e.Owner()
		r, err := manifest.ParseRoute(route)
		if err != nil {
			return nil, fmt.Errorf("route table entry %q: %w", route, err)
		}
		ent := RouteEntry{Method: method, Route: route, Owner: owner, route: r}
		if pl, err := e.Phases(); err == nil {
			for j := 0; j < pl.Len(); j++ {
				ent.Phases = append(ent.Phases, pl.At(j))
			}
		}
		if hl, err := e.Hooks(); err == nil {
			for j := 0; j < hl.Len(); j++ {
				h := hl.At(j)
				plugin, _ := h.Plugin()
				hook, _ := h.Hook()
				ent.Hooks = append(ent.Hooks, RouteHook{Plugin: plugin, Hook: hook, Phase: h.Phase(), Priority: int(h.Priority()),
					Deadline:   time.Duration(h.DeadlineMicros()) * time.Microsecond,
					FailClosed: h.FailurePolicy() == schema.FailurePolicy_failClosed, id: plugin + "/" + hook})
			}
		}
		rt.Entries = append(rt.Entries, ent)
	}
	return rt, nil
}

// failClosedHook returns a fail-closed hook of phase that a request
// matches, or nil.
func (t *RouteTable) failClosedHook(phase Phase, method, path string) *RouteHook {
	if t == nil {
		return nil
	}
	for _, h := range t.hooks(phase, method, path) {
		if h.FailClosed {
			return h
		}
	}
	return nil
}

// hooks returns the hooks of phase that a request matches, in table order.
func (t *RouteTable) hooks(phase Phase, method, path string) []*RouteHook {
	var out []*RouteHook
	for i := range t.Entries {
		e := &t.Entries[i]
		if !manifest.MethodMatches(e.Method, method) {
			continue
		}
		if _, ok := e.route.Match(path); !ok {
			continue
		}
		for j := range e.Hooks {
			if e.Hooks[j].Phase == phase {
				out = append(out, &e.Hooks[j])
			}
		}
	}
	return out
}

// RouteTable returns the newest route table the daemon pushed. A request
// matching no entry needs no dispatch at all.
func (s *Session) RouteTable() *RouteTable { return s.routes.Load() }

// WatchRoutes returns the current route table and calls update with every
// later version, from the connection's goroutine, until the session ends.
// update must not block for long.
func (s *Session) WatchRoutes(ctx context.Context, update func(*RouteTable)) (*RouteTable, error) {
	s.mu.Lock()
	s.watchers = append(s.watchers, update)
	s.mu.Unlock()
	return s.routes.Load(), nil
}

// watch asks the daemon on l to push every route table version to the
// session, and takes its current table in place of whatever the session
// knew (a new daemon numbers its tables anew).
func (s *Session) watch(ctx context.Context, l *link) error {
	gen := s.links.Add(1)
	w := schema.RouteWatcher_ServerToClient(&routeWatcher{s: s, link: gen})
	fut, release := l.s.WatchRoutes(ctx, func(p schema.HostSession_watchRoutes_Params) error {
		return p.SetWatcher(w)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return fmt.Errorf("watch route table: %w", err)
	}
	t, err := res.Table()
	if err != nil {
		return err
	}
	rt, err := readTable(t)
	if err != nil {
		return err
	}
	rt.link = gen
	s.setRoutes(rt) // a push on this connection may have come first
	return nil
}

// setRoutes keeps the newest table and tells the watchers. A table from a
// newer connection (a new daemon, whose versions start again) replaces any
// older one; within one connection, only a higher version does.
func (s *Session) setRoutes(t *RouteTable) {
	for {
		cur := s.routes.Load()
		if cur != nil && (cur.link > t.link || cur.link == t.link && cur.Version >= t.Version) {
			return
		}
		if s.routes.CompareAndSwap(cur, t) {
			break
		}
	}
	s.routesChanged(t)
}

// routesChanged tells the watchers and the cache of a new table.
func (s *Session) routesChanged(t *RouteTable) {
	if s.opts.cache != "" {
		_ = saveRoutes(s.opts.cache, t) // a cache that cannot be written only costs a cold start
	}
	s.mu.Lock()
	ws := append([]func(*RouteTable){}, s.watchers...)
	s.mu.Unlock()
	for _, w := range ws {
		w(t)
	}
}

type routeWatcher struct {
	s    *Session
	link uint64 // the connection it watches on (Session.links)
}

func (w *routeWatcher) Update(ctx context.Context, call schema.RouteWatcher_update) error {
	t, err := call.Args().Table()
	if err != nil {
		return err
	}
	rt, err := readTable(t)
	if err != nil {
		return err
	}
	rt.link = w.link
	w.s.setRoutes(rt)
	return nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, rpc.ErrConnClosed)
}

type quietLogger struct{}

func (quietLogger) Debug(string, ...any) {}
func (quietLogger) Info(string, ...any)  {}
func (quietLogger) Warn(string, ...any)  {}
func (quietLogger) Error(string, ...any) {}
