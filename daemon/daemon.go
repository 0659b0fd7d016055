// Package daemon is dimplugd's supervisor as a library: it owns the
// installed plugins (through package registry), starts each enabled plugin
// through a sandbox.Runtime, supervises it (health checks, restart with
// backoff, quarantine), dispatches hooks to it, and serves the host face on
// its host socket and the control face on its control socket, each with its
// own rights (see server.go and peer.go) and limits (limits.go).
//
// cmd/dimplugd maps flags onto a Config and calls Start:
//
//	d, err := daemon.Start(ctx, daemon.Config{StateDir: dir, Socket: sock, Runtime: rt})
//	if err != nil { ... }
//	defer d.Close()
//
// Goroutines: Start launches the socket's accept loop, one supervision
// goroutine per installed plugin and one goroutine per client connection;
// Close ends all of them and stops every plugin gracefully.
//
// Upgrades in place (handover.go): Upgrade drains like Close but, instead
// of stopping the plugins, hands each one that supports it a new control
// socket and lane, and returns a Handover record naming every descriptor
// the next process image needs; the caller executes the new binary, which
// passes the record in Config.Handover so that Start adopts those
// sandboxes (after sandbox.Adopter checked them) instead of sweeping them.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dimplugd/dimplugd/daemon/console"
	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Version is the daemon's release, reported by `dimplugd version` and the
// control face.
const Version = "0.1.0"

// Config configures a daemon. Zero values take the documented defaults.
type Config struct {
	// StateDir holds the registry database and installed plugins.
	// Required.
	StateDir string
	// Socket is the path of the host socket: the host face, hook lanes and
	// frame sockets. Required.
	Socket string
	// ControlSocket is the path of the control socket (the control face,
	// for operators); default control.sock next to Socket.
	ControlSocket string
	// HostGroup is the group (name or gid) whose members may use the host
	// socket besides root and the daemon's own user; the socket file then
	// belongs to it with mode 0660. Default none: mode 0600.
	HostGroup string
	// OperatorGroup is the same for the control socket. Default none:
	// root and the daemon's user only, mode 0600.
	OperatorGroup string
	// SocketMode overrides the host socket file's permission bits (default
	// 0660 with a HostGroup, else 0600). The peer check holds whatever the
	// mode.
	SocketMode os.FileMode
	// Limits bound connections, messages and their timeouts.
	Limits Limits
	// Runtime starts plugin instances. Required.
	Runtime sandbox.Runtime
	// Logger receives the daemon's own log; default slog.Default().
	Logger *slog.Logger
	// Supervision tunes health checks, restarts and quarantine.
	Supervision Supervision
	// ProtocolVersions overrides the protocol versions the daemon speaks;
	// only tests set it.
	ProtocolVersions []uint16
	// LogLines is how many lines of each plugin's log are kept; default
	// 2000 (logbuf.DefaultLines).
	LogLines int
	// LogBytes is how many bytes of log text are kept per plugin, all
	// lines together, the oldest lines dropped first; default 1 MiB
	// (logbuf.DefaultBytes).
	LogBytes int
	// LogLineBytes is the longest log line kept; a longer line is cut
	// and ends with a marker saying how many bytes were cut. Default
	// 8 KiB (logbuf.DefaultLineBytes).
	LogLineBytes int
	// PluginLogBytes bounds each plugin's log files on disk
	// (<StateDir>/logs/<plugin>/current.log and its rotated files),
	// all together; default 8 MiB (logstore.DefaultMaxBytes). See
	// docs/logs.md.
	PluginLogBytes int64
	// PluginLogFiles is how many files share PluginLogBytes: current.log
	// and PluginLogFiles-1 rotated ones; default 4.
	PluginLogFiles int
	// ForwardPluginLogs also writes every line of every plugin's log to
	// Logger, with attributes plugin and stream, its text escaped
	// (termesc), so that it reaches the journal.
	ForwardPluginLogs bool
	// LogLevel, when set, is the level Logger's handler reads: SetLogLevel
	// changes it while the daemon runs.
	LogLevel *slog.LevelVar
	// Resolver resolves the host names plugins fetch through the Fetcher
	// capability; default net.DefaultResolver. Tests set their own.
	Resolver Resolver
	// ConsoleSocket, when set, is the path of a Unix socket serving the
	// operator console (see console.go): made with the control socket's
	// owner, group and mode; no login. Default none.
	ConsoleSocket string
	// ConsoleListen, when set, is a loopback TCP address (127.0.0.1:PORT,
	// [::1]:PORT; port 0 picks one) serving the operator console to
	// browsers that log in with a URL from the control face's
	// consoleLogin. Default none.
	ConsoleListen string
	// MetricsListen, when set, is where the Prometheus metrics and the
	// health endpoint are served (metrics.go, docs/metrics.md): a
	// loopback TCP address (127.0.0.1:PORT, [::1]:PORT) or "unix:" and a
	// socket path, made with the control socket's owner, group and mode.
	// Default none; SetMetricsListen changes it at run time.
	MetricsListen string
	// UnsignedPolicy says what becomes of packages that carry no
	// signature by a trusted key: "refuse", "prompt" (the default: only
	// when the operator accepted it, InstallOptions.allowUnsigned; a
	// plain archive of a directory, Control.install, counts as accepted)
	// or "allow". A package signed by a key that is not trusted, or whose
	// signature does not verify, is refused under every policy. See
	// docs/packages.md.
	UnsignedPolicy string
	// MaxPackageSize bounds a package streamed to Control.installStream;
	// default 1 GiB (DefaultMaxPackageSize).
	MaxPackageSize int64
	// Handover, when set, is the record of a daemon that upgraded in
	// place (see Upgrade, ReadHandover): Start adopts its listening sockets
	// and running plugins instead of starting afresh. Start owns it.
	Handover *Handover
	// HostListener and ControlListener, when set, are listening sockets
	// made by someone else (systemd's socket activation): Start serves
	// them instead of creating Socket and ControlSocket, and takes them
	// (Close closes them). Each must be bound to Socket or ControlSocket.
	// Their file's owner, group and mode are left as their maker set them
	// and the file is not removed on Close; the peer check (HostGroup,
	// OperatorGroup) holds as on sockets the daemon creates. A listener
	// given here wins over one in Handover. If Start fails, the caller
	// closes them (closing twice is harmless).
	HostListener, ControlListener *net.UnixListener
}

// Supervision tunes how plugins are watched and restarted.
type Supervision struct {
	StartTimeout      time.Duration // spawn to handshake answered; default 10s
	StopGrace         time.Duration // after the shutdown call, before SIGTERM; default 3s
	TermGrace         time.Duration // after SIGTERM, before SIGKILL; default 2s
	HealthInterval    time.Duration // default 5s
	HealthTimeout     time.Duration // default 2s
	HealthFailures    int           // consecutive failures before a restart; default 3
	BackoffInitial    time.Duration // first restart delay; doubles per crash; default 250ms
	BackoffMax        time.Duration // default 30s
	QuarantineCrashes int           // crashes within QuarantineWindow that quarantine; default 5
	QuarantineWindow  time.Duration // default 2m
	// BreakerFailures consecutive failures of a hook open its circuit
	// breaker; default 5.
	BreakerFailures int
	// BreakerCooldown is how long an open circuit waits before probing the
	// hook again; it doubles per failed probe, up to 32 times. Default 1s.
	BreakerCooldown time.Duration
	// Standby keeps a pre-started sandbox for every running plugin, when
	// the runtime can prepare instances ahead of need: restarts then skip
	// sandbox set-up (about 2 ms instead of 20 ms here) at the cost of one
	// idle sandbox init per plugin (about 15 MiB RSS). Off by default.
	Standby bool
}

func (s Supervision) withDefaults() Supervision {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&s.StartTimeout, 10*time.Second)
	def(&s.StopGrace, 3*time.Second)
	def(&s.TermGrace, 2*time.Second)
	def(&s.HealthInterval, 5*time.Second)
	def(&s.HealthTimeout, 2*time.Second)
	def(&s.BackoffInitial, 250*time.Millisecond)
	def(&s.BackoffMax, 30*time.Second)
	def(&s.QuarantineWindow, 2*time.Minute)
	def(&s.BreakerCooldown, time.Second)
	if s.BreakerFailures <= 0 {
		s.BreakerFailures = 5
	}
	if s.HealthFailures <= 0 {
		s.HealthFailures = 3
	}
	if s.QuarantineCrashes <= 0 {
		s.QuarantineCrashes = 5
	}
	return s
}

// Daemon is a running dimplugd.
type Daemon struct {
	cfg Config
	// hostSessions are the open host sessions, by token (hostsessions.go).
	hostSessions hostSessions
	sup          Supervision
	log          *slog.Logger
	store        *registry.Store
	versions     []uint16
	started      time.Time

	ctx    context.Context // cancelled by Close; parent of every goroutine's context
	cancel context.CancelFunc
	wg     sync.WaitGroup // supervision goroutines and observers

	mu    sync.Mutex
	units map[string]*unit // installed plugins by name
	// takenOver holds, by plugin name, the data (registry.DataUsage) a
	// fresh install took over from an earlier uninstall, until the install
	// is done: undoing it keeps that data (data.go).
	takenOver sync.Map
	// txLocks serializes installs, upgrades and rollbacks per plugin name
	// (transaction.go).
	txLocks nameLocks

	routes routes
	hub    *frameHub // frame streams
	server *server   // the host socket
	ctlSrv *server   // the control socket
	// console is the operator console, nil when off or stopped.
	console atomic.Pointer[console.Server]
	metrics metricsState           // the metrics endpoint (metrics.go)
	ready   readiness              // see Ready
	limitsV atomic.Pointer[Limits] // SetLimits swaps them while the daemon runs
	// budget bounds the bytes of half-received client messages.
	budget *wire.Budget
	// pluginBudget bounds the bytes of half-received plugin messages.
	pluginBudget *wire.Budget
	openConns    atomic.Int64 // on both sockets
	// dispatches counts host dispatch calls, so tests can prove that
	// unhooked requests cost no IPC.
	dispatches atomic.Int64
	// calls counts the dispatches in flight, which Close lets finish.
	calls atomic.Int64 // dispatches in flight
	// draining is set when a graceful stop or an upgrade begins: dispatch
	// refuses new calls, so that calls stops growing.
	draining atomic.Bool
	// goodbye is closed when a drain has answered every call it started:
	// each host lane then sends the stopping frame and closes (lanes
	// counts them), telling its host that what is left was not started.
	goodbye chan struct{}
	lanes   laneSet
	closeMu sync.Mutex
	closed  bool
	// upgrading is set by Upgrade: units park their running instances
	// instead of stopping them.
	upgrading atomic.Bool
	errc      chan error // capacity 1: the first server loop that died (see Err)
	// changes is signalled when a plugin changes state (see Changes).
	changes chan struct{}
}

// Err returns a channel that receives an error when one of the daemon's
// server loops (the accept loop of the host or control socket) dies while
// the daemon is meant to be serving: the daemon no longer does its job, and
// its owner should Close it and exit non-zero. Only the first such error is
// delivered; the channel is never closed. (etcd's embed.Etcd.Err is the
// model.)
func (d *Daemon) Err() <-chan error { return d.errc }

// fail reports a dead server loop through Err.
func (d *Daemon) fail(err error) {
	d.log.Error("a server loop died; the daemon is not serving", "err", err)
	select {
	case d.errc <- err:
	default:
	}
}

// Start opens the state directory, sweeps instances left by an earlier
// daemon, starts every enabled plugin and begins serving the socket. The
// returned daemon runs until Close; ctx only bounds start-up.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.Handover != nil {
		defer cfg.Handover.Discard() // closes whatever Start did not take
	}
	if cfg.StateDir == "" || cfg.Socket == "" || cfg.Runtime == nil {
		return nil, errors.New("daemon: StateDir, Socket and Runtime are required")
	}
	if cfg.ControlSocket == "" {
		cfg.ControlSocket = filepath.Join(filepath.Dir(cfg.Socket), "control.sock")
	}
	hostGroup, err := lookupGroup(cfg.HostGroup)
	if err != nil {
		return nil, fmt.Errorf("host group: %w", err)
	}
	opGroup, err := lookupGroup(cfg.OperatorGroup)
	if err != nil {
		return nil, fmt.Errorf("operator group: %w", err)
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o600
		if hostGroup.set {
			cfg.SocketMode = 0o660
		}
	}
	ctlMode := os.FileMode(0o600)
	if opGroup.set {
		ctlMode = 0o660
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	lim := logbuf.Limits{Lines: cfg.LogLines, Bytes: cfg.LogBytes, LineBytes: cfg.LogLineBytes}.WithDefaults()
	cfg.LogLines, cfg.LogBytes, cfg.LogLineBytes = lim.Lines, lim.Bytes, lim.LineBytes
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	d := &Daemon{
		cfg:      cfg,
		errc:     make(chan error, 1),
		changes:  make(chan struct{}, 1),
		goodbye:  make(chan struct{}),
		sup:      cfg.Supervision.withDefaults(),
		log:      cfg.Logger,
		versions: cfg.ProtocolVersions,
		started:  time.Now(),
		units:    map[string]*unit{},
	}
	if d.versions == nil {
		d.versions = schema.SupportedVersions
	}
	limits := cfg.Limits.withDefaults()
	d.limitsV.Store(&limits)
	d.budget = wire.NewBudget(limits.ReceiveBudget)
	d.pluginBudget = wire.NewBudget(limits.ReceiveBudget)
	d.routes.init()
	d.hub = newFrameHub(d)
	if d.cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if d.store, err = registry.OpenWith(d.cfg.StateDir, registry.Options{Logger: d.log.With("component", "registry"),
		CheckFiles: func(dir string, m *manifest.Manifest) error {
			return checkEntrypoint(dir, m.Entrypoint, cfg.Runtime.Sandboxed())
		}}); err != nil {
		return nil, err
	}
	// Instances handed over by an upgrading daemon are adopted before
	// Sweep, which ends every other instance left in the runtime.
	var adopted map[string]*adoption
	if cfg.Handover != nil {
		adopted = d.adoptHandover(ctx, cfg.Handover)
	}
	discardAdopted := func() {
		for name, a := range adopted {
			if err := a.discard(); err != nil {
				d.log.Warn("destroy a handed-over plugin instance", "plugin", name, "err", err)
			}
		}
	}
	if err := cfg.Runtime.Sweep(ctx); err != nil {
		discardAdopted()
		d.store.Close()
		return nil, fmt.Errorf("sweep instances left by an earlier daemon: %w", err)
	}
	if !cfg.Runtime.Sandboxed() {
		d.log.Warn("plugins run WITHOUT a sandbox: they can read and write everything this daemon can; use only for development", "runtime", cfg.Runtime.Name())
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())

	recs, err := d.store.List()
	if err != nil {
		discardAdopted()
		d.cancel()
		d.store.Close()
		return nil, err
	}
	var adopting []*adoption
	d.mu.Lock()
	for _, rec := range recs {
		if a := adopted[rec.Name]; a != nil {
			adopting = append(adopting, a)
		}
		d.addUnitLocked(rec, adopted[rec.Name])
		delete(adopted, rec.Name)
	}
	d.mu.Unlock()
	d.pruneLogs(recs)
	// Handed over, but no longer installed.
	discardAdopted()
	d.rebuildRoutes()
	// Hosts are served once the adopted plugins run here, so that no host
	// finds one "starting"; their connections wait in the backlog.
	d.awaitAdopted(adopting)

	var inherited [2]*os.File // listening sockets handed over
	if h := cfg.Handover; h != nil {
		inherited[0], inherited[1] = takeFile(&h.Socket, "host socket"), takeFile(&h.Control, "control socket")
	}
	if d.server, err = listen(d, faceHost, cfg.Socket, cfg.SocketMode, hostGroup, inherited[0], cfg.HostListener); err != nil {
		d.Close()
		return nil, err
	}
	if d.ctlSrv, err = listen(d, faceControl, cfg.ControlSocket, ctlMode, opGroup, inherited[1], cfg.ControlListener); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.startConsole(opGroup, ctlMode); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.startMetrics(opGroup, ctlMode); err != nil {
		d.Close()
		return nil, err
	}
	d.ready.serving.Store(true) // see Ready
	d.log.Info("dimplugd started", "version", Version, "socket", cfg.Socket, "control_socket", cfg.ControlSocket,
		"host_group", cfg.HostGroup, "operator_group", cfg.OperatorGroup, "state", d.cfg.StateDir,
		"runtime", cfg.Runtime.Name(), "sandboxed", cfg.Runtime.Sandboxed(), "plugins", len(recs))
	return d, nil
}

// Close stops serving, stops every plugin gracefully and closes the state.
// It is safe to call more than once.
func (d *Daemon) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.drain()
	return d.closeRest()
}

// drainMax bounds how long a graceful stop waits for calls in flight.
const drainMax = 10 * time.Second

// drain is the first step of a graceful stop: the sockets stop accepting
// connections and new hook calls are refused with wire.ErrStopping (the
// host sends them again to the next daemon), then the hook calls in flight
// finish (each within its own
// deadline; all within drainMax). Closing the connections afterwards is
// what tells hosts to reconnect: the Go SDK does so at once, answering by
// the hooks' policies until the new daemon is up.
func (d *Daemon) drain() {
	d.draining.Store(true) // new dispatches are refused (see dispatch)
	d.closeConsole()       // an operator's change now would not be kept
	defer d.closeMetrics() // /healthz says "stopping" while the calls finish
	for _, s := range []*server{d.server, d.ctlSrv} {
		if s != nil {
			s.stopAccepting()
		}
	}
	if n := d.calls.Load(); n > 0 {
		d.log.Info("draining: waiting for hook calls in flight", "calls", n)
		deadline := time.Now().Add(drainMax)
		for d.calls.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := d.calls.Load(); n > 0 {
		d.log.Warn("drained for too long; cutting the calls still in flight", "calls", n, "waited", drainMax)
		return
	}
	// Every call started is answered: the host lanes say so and close,
	// within goodbyeMax (their handlers only refuse new calls now).
	close(d.goodbye)
	select {
	case <-d.lanes.idle():
	case <-time.After(goodbyeMax):
		d.log.Warn("host lanes did not close after the drain; closing them", "waited", goodbyeMax)
	}
}

// goodbyeMax bounds how long a drain waits for host lanes to close.
const goodbyeMax = time.Second

// Socket returns the path of the host socket.
func (d *Daemon) Socket() string { return d.cfg.Socket }

// ControlSocket returns the path of the control socket.
func (d *Daemon) ControlSocket() string { return d.cfg.ControlSocket }

// addUnitLocked creates the supervision goroutine for an installed plugin.
// d.mu must be held.
func (d *Daemon) addUnitLocked(rec registry.Record, a *adoption) *unit {
	u := newUnit(d, rec)
	u.adopted = a
	d.units[rec.Name] = u
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		u.run(d.ctx)
	}()
	return u
}

func (d *Daemon) unit(name string) (*unit, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u, ok := d.units[name]
	if !ok {
		return nil, fmt.Errorf("plugin %q is not installed (see dimplugctl ls): %w", name, registry.ErrNotFound)
	}
	return u, nil
}

func (d *Daemon) sortedUnits() []*unit {
	d.mu.Lock()
	defer d.mu.Unlock()
	us := make([]*unit, 0, len(d.units))
	for _, u := range d.units {
		us = append(us, u)
	}
	sort.Slice(us, func(i, j int) bool { return us[i].name < us[j].name })
	return us
}
