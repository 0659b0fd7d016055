// Package plugin is what dimplugd plugin authors import. A plugin is a type
// with methods — one per hook phase it handles — passed to Serve:
//
//	type badge struct{ host *plugin.Host }
//
//	func (b *badge) Init(ctx context.Context, h *plugin.Host) error {
//		b.host = h
//		return nil
//	}
//
//	func (b *badge) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
//		resp.Header.Set("X-Badge", "4K")
//		return nil
//	}
//
//	func main() {
//		if err := plugin.Serve(&badge{}); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Serve takes care of the rest: the control socket the daemon passes as file
// descriptor 3, protocol version negotiation, the host services the operator
// granted (a structured logger and a private key-value store), running hooks
// concurrently under the daemon's deadlines, turning handler panics into
// errors, and graceful shutdown when the daemon asks for it, sends SIGTERM or
// goes away.
//
// Handlers mutate the Request or Response they are given; the SDK sends only
// what changed. Package plugintest drives a plugin in-process with a fake
// host, for plugin authors' tests.
//
// This package must not import the daemon, the sandbox or cobra.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// SDKVersion identifies this SDK in the plugin's self-description.
const SDKVersion = "dimplugd-sdk-go/0.1.0"

// ControlFD is where the daemon passes the plugin's control socket.
const ControlFD = 3

// Request and Response are the HTTP exchange hooks see and mutate.
type (
	Request  = wire.Request
	Response = wire.Response
	Param    = wire.Param
)

// RequestHook handles request-phase hooks: it runs before the host's
// handler and may change req's headers, query and body. Request hooks of
// all plugins run in priority order (lower first, then by plugin name);
// response hooks run in the reverse order, so a hook with a low priority
// sees the request first and the response last. Returning a non-nil
// Response answers the request at once; the host's handler never runs.
type RequestHook interface {
	HookRequest(ctx context.Context, hook string, req *Request) (*Response, error)
}

// ResponseHook handles response-phase hooks: it may change resp's status,
// headers and body. req is a copy; changing it has no effect.
type ResponseHook interface {
	HookResponse(ctx context.Context, hook string, req *Request, resp *Response) error
}

// RouteHandler handles route-phase hooks: the plugin owns the route and
// produces the whole response.
type RouteHandler interface {
	ServeRoute(ctx context.Context, hook string, req *Request) (*Response, error)
}

// Observer handles observe-phase hooks: it gets a copy of each finished
// exchange and cannot change anything. It never delays the host. Observe
// calls run concurrently and may arrive out of order: guard shared state,
// and use Request.ReceivedAt to order events.
type Observer interface {
	Observe(ctx context.Context, hook string, req *Request, resp *Response)
}

// Initializer is called once, after the handshake and before the first
// hook, with the services the daemon granted. An error stops the plugin.
type Initializer interface {
	Init(ctx context.Context, host *Host) error
}

// HealthChecker is called by the daemon's periodic health check. Plugins
// without it are healthy whenever they answer.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// Closer is called once when the plugin stops, after in-flight hooks ended.
type Closer interface {
	Close(ctx context.Context) error
}

// Option configures Serve.
type Option func(*config)

type config struct {
	version  string
	versions []uint16
	lane     net.Conn
	frames   *frames.Conn
}

// WithVersion sets the version the plugin reports about itself (the
// manifest's version is what the daemon shows; this one helps spot a stale
// binary).
func WithVersion(v string) Option { return func(c *config) { c.version = v } }

// WithProtocolVersions overrides the protocol versions the plugin offers.
// Only tests need it.
func WithProtocolVersions(vs ...uint16) Option { return func(c *config) { c.versions = vs } }

// WithLane serves the hook lane (schema/lane.capnp) on c, which Serve
// closes. Serve sets it up by itself from fd 4; only tests and custom
// launchers need it.
func WithLane(c net.Conn) Option { return func(cfg *config) { cfg.lane = c } }

// WithFrames serves frame streams (schema/stream.capnp) on c, which Serve
// closes. Serve sets it up by itself from fd 5; package plugintest uses it.
func WithFrames(c *frames.Conn) Option { return func(cfg *config) { cfg.frames = c } }

// LaneFD is where the daemon passes the hook lane's socket.
const LaneFD = 4

// ErrNotUnderDaemon is returned by Serve when the process was not started by
// dimplugd (there is no control socket on fd 3).
var ErrNotUnderDaemon = errors.New("no control socket on fd 3: plugins are started by dimplugd (dimplugctl install <dir>), not run by hand; use package plugintest to drive one in tests")

// Serve runs p as a plugin on the control socket the daemon passed, and
// returns when the daemon stops the plugin or goes away (nil), on SIGTERM or
// SIGINT (nil), or when the plugin cannot run (an error saying why). p
// implements any of RequestHook, ResponseHook, RouteHandler, Observer, plus
// optionally Initializer, HealthChecker and Closer.
func Serve(p any, opts ...Option) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	f := os.NewFile(ControlFD, "dimplugd-control")
	if f == nil {
		return ErrNotUnderDaemon
	}
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%w (%v)", ErrNotUnderDaemon, err)
	}
	// The hook lane is optional: a daemon that passes no fd 4 gets hook
	// calls over RPC only.
	if lf := os.NewFile(LaneFD, "dimplugd-lane"); lf != nil {
		if lc, err := net.FileConn(lf); err == nil {
			opts = append([]Option{WithLane(lc)}, opts...)
		}
		lf.Close()
	}
	// The frame socket carries frame streams and direct hook lanes to
	// hosts.
	if fc := framesFromFD(); fc != nil {
		opts = append([]Option{WithFrames(fc)}, opts...)
	}
	return ServeConn(ctx, conn, p, opts...)
}

// ServeConn is Serve on an explicit connection. It returns when ctx is done,
// the connection closes or the daemon asks the plugin to stop; it closes rwc.
func ServeConn(ctx context.Context, rwc io.ReadWriteCloser, p any, opts ...Option) error {
	cfg := config{versions: schema.SupportedVersions}
	for _, o := range opts {
		o(&cfg)
	}
	if !implementsAny(p) {
		rwc.Close()
		return fmt.Errorf("plugin type %T implements no hook interface (RequestHook, ResponseHook, RouteHandler, Observer, FrameFilter or FrameObserver)", p)
	}
	s := newServer(p, cfg)
	boot := schema.PluginBootstrap_ServerToClient(&bootstrap{s: s})
	defer boot.Release()
	conn := wire.NewConn(rwc, capnpClient(boot.AddRef()), quietLogger{})
	laneDone := make(chan struct{})
	laneCtx, stopLane := context.WithCancel(context.Background())
	if cfg.lane != nil {
		go func() { // ends when the lane closes or stopLane
			defer close(laneDone)
			_ = wire.ServeLane(laneCtx, cfg.lane, s.laneHook)
		}()
	} else {
		close(laneDone)
	}
	defer func() {
		stopLane()
		<-laneDone
	}()
	// A daemon upgraded in place hands the plugin a new control socket
	// over the frame socket: the loop below moves to it.
	type rebind struct {
		ctl  net.Conn
		done chan struct{}
	}
	rebinds := make(chan rebind)
	serving := make(chan struct{}) // closed when the loop below ends
	if cfg.frames != nil {
		fs := newFrameServer(p, cfg.frames, s.ready, func(c net.Conn) {
			_ = wire.ServeLane(laneCtx, c, s.laneHook) // a direct lane from a host, or the daemon's new lane
		}, func(ctl net.Conn) bool {
			rb := rebind{ctl: ctl, done: make(chan struct{})}
			select {
			case rebinds <- rb:
				<-rb.done
				return true
			case <-serving:
				ctl.Close()
				return false
			}
		})
		framesDone := make(chan struct{})
		go func() { defer close(framesDone); fs.serve() }() // ends when the socket closes
		defer func() {
			fs.close()
			<-framesDone
		}()
	}

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
		case <-conn.Done():
		case <-s.stopReq:
		case rb := <-rebinds:
			old := conn
			conn = wire.NewConn(rb.ctl, capnpClient(boot.AddRef()), quietLogger{})
			close(rb.done)
			old.Close() // the old daemon's; it ends with its process image
			continue
		case err = <-s.fatal:
			// Let the answer reach the daemon, which reports the mismatch
			// and closes the connection.
			select {
			case <-conn.Done():
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
		break loop
	}
	close(serving)
	s.shutdown()
	if cerr := conn.Close(); cerr != nil && err == nil && !isClosedErr(cerr) {
		err = cerr
	}
	return err
}

func implementsAny(p any) bool {
	switch p.(type) {
	case RequestHook, ResponseHook, RouteHandler, Observer, FrameFilter, FrameObserver:
		return true
	}
	return false
}

// phases lists the hook phases p has handlers for.
func phases(p any) []schema.Phase {
	var ps []schema.Phase
	if _, ok := p.(RequestHook); ok {
		ps = append(ps, schema.Phase_request)
	}
	if _, ok := p.(ResponseHook); ok {
		ps = append(ps, schema.Phase_response)
	}
	if _, ok := p.(RouteHandler); ok {
		ps = append(ps, schema.Phase_route)
	}
	if _, ok := p.(Observer); ok {
		ps = append(ps, schema.Phase_observe)
	}
	return ps
}
