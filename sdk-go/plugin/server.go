package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// server holds one plugin's state on one connection. The rpc package owns
// the goroutines that call its methods; ServeConn owns its lifetime.
type server struct {
	p   any
	cfg config

	mu       sync.Mutex
	host     *Host // set by the handshake
	inflight sync.WaitGroup
	closed   bool

	stopReq  chan struct{} // closed by the stop call
	stopOnce sync.Once
	ready    chan struct{} // closed once the handshake (and Init) succeeded
	fatal    chan error    // the handshake failed; buffered
}

func newServer(p any, cfg config) *server {
	return &server{p: p, cfg: cfg, stopReq: make(chan struct{}), fatal: make(chan error, 1), ready: make(chan struct{})}
}

// shutdown waits (briefly) for in-flight hooks, calls the plugin's Close and
// releases the host services.
func (s *server) shutdown() {
	s.mu.Lock()
	s.closed = true
	host := s.host
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	if c, ok := s.p.(Closer); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := c.Close(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "plugin close: %v\n", err)
		}
		cancel()
	}
	if host != nil {
		host.release()
	}
}

// errStopping refuses calls once the plugin is stopping: unavailable, so
// that the caller applies the hook's policy as for a plugin that is not
// running, rather than counting a failure. Marked for the wire.
var errStopping = errdefs.ToWire(errdefs.New(errdefs.ErrUnavailable, "plugin is stopping"))

// begin registers an in-flight call; it fails once the plugin is stopping.
func (s *server) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errStopping
	}
	s.inflight.Add(1)
	return nil
}

type bootstrap struct{ s *server }

func (b *bootstrap) Handshake(ctx context.Context, call schema.PluginBootstrap_handshake) error {
	s := b.s
	args := call.Args()
	theirs, err := wire.ReadVersions(args.DaemonVersions())
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	if err := wire.WriteVersions(res.NewPluginVersions, s.cfg.versions); err != nil {
		return err
	}
	version, verr := schema.Negotiate("plugin", "this plugin", "the daemon", s.cfg.versions, theirs)
	if verr != nil {
		// Answer (version 0) so the daemon can report both lists, then
		// end Serve with the same facts from this side.
		fmt.Fprintf(os.Stderr, "plugin: %v\n", verr)
		select {
		case s.fatal <- verr:
		default:
		}
		return nil
	}
	res.SetVersion(version)

	inst, err := args.Instance()
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	svc, err := args.Services()
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	s.mu.Lock()
	host := s.host
	s.mu.Unlock()
	if host != nil {
		// A daemon upgraded in place, on the control socket it handed
		// over: the plugin is initialised already and keeps its state.
		host.rebind(svc)
		return answerHandshake(res, host.Name, s)
	}
	host = newHost(inst, svc)

	if in, ok := s.p.(Initializer); ok {
		call.Go()
		if err := safely("init", func() error { return in.Init(ctx, host) }); err != nil {
			host.release()
			return fmt.Errorf("plugin init failed: %w", err)
		}
	}
	s.mu.Lock()
	s.host = host
	s.mu.Unlock()
	close(s.ready)
	return answerHandshake(res, host.Name, s)
}

// answerHandshake fills the handshake's results: the plugin's info and its
// Plugin capability.
func answerHandshake(res schema.PluginBootstrap_handshake_Results, name string, s *server) error {
	info, err := res.NewInfo()
	if err != nil {
		return err
	}
	if err := writeInfo(info, name, s); err != nil {
		return err
	}
	return res.SetPlugin(schema.Plugin_ServerToClient(&pluginServer{s: s}))
}

func writeInfo(info schema.PluginInfo, name string, s *server) error {
	info.SetLane(s.cfg.lane != nil)
	info.SetFrames(s.cfg.frames != nil)
	info.SetRebind(s.cfg.frames != nil) // see frameServer.rebound
	if err := info.SetName(name); err != nil {
		return err
	}
	if err := info.SetVersion(s.cfg.version); err != nil {
		return err
	}
	if err := info.SetSdk(SDKVersion); err != nil {
		return err
	}
	ps := phases(s.p)
	l, err := info.NewPhases(int32(len(ps)))
	if err != nil {
		return err
	}
	for i, p := range ps {
		l.Set(i, p)
	}
	if s.cfg.frames == nil {
		return nil
	}
	roles := frameRoles(s.p)
	tl, err := info.NewFrameRoles(int32(len(roles)))
	if err != nil {
		return err
	}
	for i, r := range roles {
		if err := tl.Set(i, r); err != nil {
			return err
		}
	}
	return nil
}

// frameRoles lists the stream roles p has frame handlers for, as the
// handshake reports them (PluginInfo.frameRoles).
func frameRoles(p any) []string {
	var roles []string
	if _, ok := p.(FrameFilter); ok {
		roles = append(roles, "transform")
	}
	if _, ok := p.(FrameObserver); ok {
		roles = append(roles, "observe")
	}
	return roles
}

type pluginServer struct{ s *server }

func (ps *pluginServer) Describe(ctx context.Context, call schema.Plugin_describe) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	info, err := res.NewInfo()
	if err != nil {
		return err
	}
	ps.s.mu.Lock()
	name := ps.s.host.Name
	ps.s.mu.Unlock()
	return writeInfo(info, name, ps.s)
}

func (ps *pluginServer) Health(ctx context.Context, call schema.Plugin_health) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	if hc, ok := ps.s.p.(HealthChecker); ok {
		call.Go()
		if err := safely("health", func() error { return hc.Health(ctx) }); err != nil {
			res.SetOk(false)
			return res.SetDetail(err.Error())
		}
	}
	res.SetOk(true)
	return nil
}

func (ps *pluginServer) Stop(ctx context.Context, call schema.Plugin_stop) error {
	ps.s.stopOnce.Do(func() { close(ps.s.stopReq) })
	return nil
}

func (ps *pluginServer) Hook(ctx context.Context, call schema.Plugin_hook) error {
	call.Go() // hooks run concurrently
	hc, err := call.Args().Call()
	if err != nil {
		return err
	}
	return ps.s.hook(ctx, hc, func() (schema.HookResult, error) {
		results, err := call.AllocResults()
		if err != nil {
			return schema.HookResult{}, err
		}
		return results.NewResult()
	})
}

// laneHook answers a hook call that came on the hook lane.
func (s *server) laneHook(ctx context.Context, req, reply schema.LaneFrame) error {
	if req.Which() != schema.LaneFrame_Which_hook {
		return fmt.Errorf("hook lane: unexpected %s frame", req.Which())
	}
	hc, err := req.Hook()
	if err != nil {
		return err
	}
	return s.hook(ctx, hc, reply.NewHookResult)
}

// hook runs one hook call, from RPC or the lane; alloc makes the result.
func (s *server) hook(ctx context.Context, hs schema.HookCall, alloc func() (schema.HookResult, error)) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.inflight.Done()
	hc, err := wire.ReadHookCall(hs)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); hc.Timeout > 0 && (!ok || time.Until(dl) > hc.Timeout) {
		// (A call on a lane has its deadline already: wire.serveLane.)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hc.Timeout)
		defer cancel()
	}
	a, err := runHook(ctx, s.p, &hc)
	if err != nil {
		return err
	}
	out, err := alloc()
	if err != nil {
		return err
	}
	return wire.WriteHookResult(hc.Phase, out, &a)
}

// runHook calls the handler for the call's phase and returns what it did.
func runHook(ctx context.Context, p any, hc *wire.HookCall) (wire.HookAnswer, error) {
	hook, req, resp := hc.Hook, hc.Request, hc.Response
	cont := wire.HookAnswer{Kind: schema.HookResult_Which_continue}
	switch hc.Phase {
	case schema.Phase_request:
		h, ok := p.(RequestHook)
		if !ok {
			return cont, missingHandler(hc.Phase, hook)
		}
		before := req.Clone()
		var answer *Response
		if err := safelyHook(hook, func() (err error) {
			answer, err = h.HookRequest(ctx, hook, req)
			return err
		}); err != nil {
			return cont, err
		}
		if answer != nil {
			return respond(answer), nil
		}
		return wire.HookAnswer{Kind: schema.HookResult_Which_mutateRequest, RequestMutation: wire.DiffRequest(before, req)}, nil

	case schema.Phase_response:
		h, ok := p.(ResponseHook)
		if !ok {
			return cont, missingHandler(hc.Phase, hook)
		}
		before := resp.Clone()
		if err := safelyHook(hook, func() error { return h.HookResponse(ctx, hook, req, resp) }); err != nil {
			return cont, err
		}
		return wire.HookAnswer{Kind: schema.HookResult_Which_mutateResponse, ResponseMutation: wire.DiffResponse(before, resp)}, nil

	case schema.Phase_route:
		h, ok := p.(RouteHandler)
		if !ok {
			return cont, missingHandler(hc.Phase, hook)
		}
		var answer *Response
		if err := safelyHook(hook, func() (err error) {
			answer, err = h.ServeRoute(ctx, hook, req)
			return err
		}); err != nil {
			return cont, err
		}
		if answer == nil {
			return cont, fmt.Errorf("route hook %q returned no response", hook)
		}
		return respond(answer), nil

	case schema.Phase_observe:
		h, ok := p.(Observer)
		if !ok {
			return cont, missingHandler(hc.Phase, hook)
		}
		return cont, safelyHook(hook, func() error { h.Observe(ctx, hook, req, resp); return nil })
	}
	return cont, fmt.Errorf("hook %q: unknown phase %d", hook, hc.Phase)
}

// respond is the answer of a hook that answered the request itself; a
// response without a status is a 200.
func respond(r *Response) wire.HookAnswer {
	if r.Status == 0 {
		r.Status = 200
	}
	return wire.HookAnswer{Kind: schema.HookResult_Which_respond, Response: r}
}

func missingHandler(phase schema.Phase, hook string) error {
	return fmt.Errorf("hook %q is a %s hook but the plugin has no %s handler", hook, phase, phase)
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// safely runs f, turning a panic into an error so that one bad request
// cannot take the plugin down. The stack goes to stderr, which the daemon
// keeps in the plugin's log.
func safely(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = recovered(what, r)
		}
	}()
	return f()
}

// safelyHook is safely for a hook's handler, naming the hook only if it
// panics (a hot path: no formatting per call).
func safelyHook(hook string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = recovered("hook "+quote(hook), r)
		}
	}()
	return f()
}

// recovered logs a handler's panic and turns it into its error.
func recovered(what string, r any) error {
	fmt.Fprintf(os.Stderr, "panic in %s: %v\n%s", what, r, debug.Stack())
	if f, ok := r.(interface{ Addr() uintptr }); ok && f.Addr() != 0 {
		return fmt.Errorf("%s faulted at %#x: %v (received frames are read-only shared memory: to change one, make a new frame)", what, f.Addr(), r)
	}
	return fmt.Errorf("%s panicked: %v", what, r)
}

func capnpClient[T ~capnp.ClientKind](c T) capnp.Client { return capnp.Client(c) }

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "closed")
}

// quietLogger drops the rpc package's logs: a daemon closing the connection
// is how a plugin is told to exit, not an error worth printing.
type quietLogger struct{}

func (quietLogger) Debug(string, ...any) {}
func (quietLogger) Info(string, ...any)  {}
func (quietLogger) Warn(string, ...any)  {}
func (quietLogger) Error(string, ...any) {}
