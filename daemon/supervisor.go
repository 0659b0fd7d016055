package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/logstore"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// unit supervises one installed plugin. Its run goroutine, started by the
// daemon, is the only one that starts and stops instances; everything else
// changes the desired state under mu and kicks it. Its state (see
// pluginState) changes only through transitionLocked.
type unit struct {
	d    *Daemon
	name string
	logs *logbuf.Buffer
	// logFiles keeps logs on disk (pluginlogs.go); nil when they cannot
	// be opened.
	logFiles *logstore.Writer

	kick chan struct{} // capacity 1: the desired state changed
	done chan struct{} // closed when run returns

	mu  sync.Mutex
	rec registry.Record
	// The operator's requests to the run loop, which acts on them; they
	// are not states and may come in any state.
	removed     bool // the plugin is being removed; never cleared
	restartReq  bool // restart the running instance (cleared when the run loop starts over)
	state       pluginState
	inst        *instance                 // the running state's instance, else nil; written only by transitionLocked
	standby     *launch                   // a prepared next instance, when the runtime can
	breakers    map[string]*wire.Breaker  // by hook name; kept across restarts and route rebuilds
	stageCounts map[string]*stageCounters // by stream stage name; kept across restarts
	// policyCounts are each hook's answers by policy, by cause; kept
	// across restarts.
	policyCounts map[string]*policyCounts
	latencies    map[string]*hookLatency // by hook name; kept across restarts (metrics.go)
	observeQ     callQueue               // its observe calls, in order (see dispatchObserve)
	settings     unitSettings            // its settings schemas and the running instance's capability
	// adopted is an instance an upgrading daemon handed over, for the
	// run loop to take on its first turn; parked is the running instance
	// the run loop left for Upgrade to hand over.
	adopted *adoption
	parked  *instance
	// pending is an upgrade to start beside the running instance
	// (transaction.go); the run loop takes it.
	pending  *pendingUpgrade
	seq      int
	restarts int
	// crashTotal counts crashes since the daemon started, for the
	// metrics; restarts is reset when the operator lets the plugin back.
	crashTotal uint64
	crashes    []time.Time
	lastExit   string
}

// instance is one running process of a plugin and its connection.
type instance struct {
	id      string
	proc    sandbox.Process
	conn    *rpc.Conn
	plugin  schema.Plugin
	lane    *wire.LaneClient // nil when the plugin does not serve the hook lane
	frames  *framePeer       // nil when the plugin takes no frame streams
	version uint16
	rebind  bool // the plugin can be handed to an upgraded daemon (PluginInfo.rebind)
	started time.Time
	// outR and errR are the read ends of the plugin's output, kept for a
	// hand-over; the instance's log goroutine reads them.
	outR, errR *os.File
	ioDone     chan struct{} // stdout and stderr copied to the end
	// calls counts the references client handed out and not yet
	// released, so that an upgrade stops it only once they are done.
	calls atomic.Int64
}

func newUnit(d *Daemon, rec registry.Record) *unit {
	u := &unit{
		d:     d,
		name:  rec.Name,
		logs:  logbuf.New(logbuf.Limits{Lines: d.cfg.LogLines, Bytes: d.cfg.LogBytes, LineBytes: d.cfg.LogLineBytes}),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		rec:   rec,
		state: stoppedState{},
	}
	u.openLogs()
	return u
}

func (u *unit) poke() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// breaker returns the circuit breaker of one of the plugin's hooks.
// stageCounters are what one of a plugin's stream stages did since the
// daemon started (dimplugctl inspect shows them). The frame hub updates
// them under its lock; readers load them as they are.
type stageCounters struct {
	streams, frames, dropped, missed, failures atomic.Uint64
	open                                       atomic.Int64
	bytes                                      atomic.Uint64         // of the frames counted in frames
	latency                                    wire.LatencyHistogram // a transform stage's frames, handed over to answered
}

// stageStats returns the counters of the plugin's stream stage name.
func (u *unit) stageStats(name string) *stageCounters {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stageCounts == nil {
		u.stageCounts = map[string]*stageCounters{}
	}
	c, ok := u.stageCounts[name]
	if !ok {
		c = &stageCounters{}
		u.stageCounts[name] = c
	}
	return c
}

func (u *unit) breaker(hook string) *wire.Breaker {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.breakers == nil {
		u.breakers = map[string]*wire.Breaker{}
	}
	b, ok := u.breakers[hook]
	if !ok {
		b = wire.NewBreaker(u.d.sup.BreakerFailures, u.d.sup.BreakerCooldown)
		u.breakers[hook] = b
	}
	return b
}

// wantedLocked reports whether an instance should be running.
func (u *unit) wantedLocked() bool {
	return u.rec.Enabled && !u.removed && !u.outLocked()
}

func (u *unit) wanted() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.wantedLocked()
}

func (u *unit) logf(format string, args ...any) {
	u.logs.Append(logbuf.Daemon, fmt.Sprintf(format, args...))
}

// run is the unit's supervision loop. It returns when ctx is done or the
// plugin is removed, with no instance left running.
func (u *unit) run(ctx context.Context) {
	defer close(u.done)
	defer u.dropStandby()
	defer func() { // not taken: the daemon closed first
		if a := u.takeAdopted(); a != nil {
			_ = a.discard()
		}
	}()
	for {
		if !u.waitWanted(ctx) {
			return
		}
		var inst *instance
		var err error
		if a := u.takeAdopted(); a != nil {
			inst, err = u.adopt(ctx, a)
			a.settle()
		} else {
			inst, err = u.start(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var perm *permanentError
			if errors.As(err, &perm) {
				_ = u.transition(failedState{why: err.Error()})
				u.logf("cannot start: %v", err)
				u.d.log.Error("plugin cannot start", "plugin", u.name, "err", err)
				continue
			}
			if !u.crashed(ctx, err.Error()) {
				return
			}
			continue
		}
		var reason string
		var crash bool
		inst, reason, crash = u.supervise(ctx, inst)
		if crash {
			_ = u.transition(backoffState{why: reason}) // not "running" while it is torn down
			u.teardown(inst)
			if !u.crashed(ctx, reason) {
				return
			}
			continue
		}
		if ctx.Err() != nil && u.d.upgrading.Load() && inst.rebind && inst.frames != nil {
			// Upgrade hands it to the new daemon image.
			u.mu.Lock()
			u.parked = inst
			u.mu.Unlock()
			return
		}
		u.stop(inst, reason)
		if ctx.Err() != nil {
			return
		}
	}
}

// waitWanted blocks until an instance should run. It returns false when the
// unit is finished (ctx done or plugin removed).
func (u *unit) waitWanted(ctx context.Context) bool {
	for {
		u.mu.Lock()
		if u.removed {
			_ = u.transitionLocked(stoppedState{why: "removed"})
			u.mu.Unlock()
			return false
		}
		u.restartReq = false
		if u.wantedLocked() {
			u.mu.Unlock()
			return true
		}
		// The standby goes with the state change, so that a stopped
		// plugin never shows one.
		standby := u.standby
		u.standby = nil
		if !u.outLocked() {
			_ = u.transitionLocked(stoppedState{why: "disabled"})
		}
		u.mu.Unlock()
		if standby != nil {
			standby.close()
		}
		select {
		case <-u.kick:
		case <-ctx.Done():
			return false
		}
	}
}

// crashed records an unexpected end of an instance and waits out the
// backoff, or quarantines the plugin. It returns false when the unit is
// finished.
func (u *unit) crashed(ctx context.Context, why string) bool {
	sup := u.d.sup
	now := time.Now()
	u.mu.Lock()
	u.restarts++
	u.crashTotal++
	u.lastExit = why
	kept := u.crashes[:0]
	for _, t := range u.crashes {
		if now.Sub(t) < sup.QuarantineWindow {
			kept = append(kept, t)
		}
	}
	u.crashes = append(kept, now)
	n := len(u.crashes)
	if n >= sup.QuarantineCrashes {
		detail := fmt.Sprintf("crashed %d times within %s (last: %s); fix the plugin, then run: dimplugctl restart %s",
			n, sup.QuarantineWindow, why, u.name)
		_ = u.transitionLocked(quarantinedState{why: detail})
		u.mu.Unlock()
		u.logf("quarantined: %s", detail)
		u.d.log.Error("plugin quarantined", "plugin", u.name, "crashes", n, "last", why)
		return true
	}
	delay := sup.BackoffInitial << (n - 1)
	if delay > sup.BackoffMax || delay <= 0 {
		delay = sup.BackoffMax
	}
	_ = u.transitionLocked(backoffState{why: why, delay: delay, until: now.Add(delay)})
	u.mu.Unlock()
	u.logf("%s; restarting in %s (crash %d of %d allowed within %s)", why, delay, n, sup.QuarantineCrashes-1, sup.QuarantineWindow)
	u.d.log.Warn("plugin crashed", "plugin", u.name, "why", why, "restart_in", delay)

	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		case <-u.kick:
			u.mu.Lock()
			skip := u.restartReq || !u.wantedLocked()
			u.mu.Unlock()
			if skip {
				return true
			}
		}
	}
}

// permanentError marks a start failure that restarting cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// launch is an instance's sandbox and the daemon's ends of its channels,
// between spawning and the handshake.
type launch struct {
	id         string
	key        string // what it was built from (see specKey)
	nc         net.Conn
	lane       net.Conn     // the daemon's end of the hook lane
	frames     *frames.Conn // the daemon's end of the frame socket
	outR, errR *os.File
	prepared   sandbox.Prepared // set while it is a standby
}

func (l *launch) close() {
	if l.prepared != nil {
		l.prepared.Discard()
	}
	if l.nc != nil {
		l.nc.Close()
	}
	if l.lane != nil { // an adopted instance may have none
		l.lane.Close()
	}
	if l.frames != nil {
		l.frames.Close()
	}
	for _, f := range []*os.File{l.outR, l.errR} {
		if f != nil {
			f.Close()
		}
	}
}

// specKey identifies what an instance is built from: a standby prepared
// from an older record (before an upgrade or a new grant) is not used.
func specKey(rec registry.Record) string {
	return fmt.Sprintf("%s|%s|%q|%+v", rec.Dir, rec.Manifest.Entrypoint, rec.Manifest.Args, rec.Grant)
}

// newLaunch creates the channels of a new instance and the spec holding the
// plugin's ends, which the caller closes once the runtime has them.
func (u *unit) newLaunch(rec registry.Record) (l *launch, spec *sandbox.Spec, closeTheirs func(), err error) {
	u.mu.Lock()
	u.seq++
	id := fmt.Sprintf("%s-%d", u.name, u.seq)
	u.mu.Unlock()
	var opened []io.Closer // closed if a later step fails
	defer func() {
		if err != nil {
			for _, c := range opened {
				c.Close()
			}
		}
	}()
	nc, theirs, err := socketpair("control")
	if err != nil {
		return nil, nil, nil, err
	}
	opened = append(opened, nc, theirs)
	lane, theirLane, err := socketpair("lane")
	if err != nil {
		return nil, nil, nil, err
	}
	opened = append(opened, lane, theirLane)
	fc, theirFrames, err := frames.Socketpair()
	if err != nil {
		return nil, nil, nil, err
	}
	opened = append(opened, fc, theirFrames)
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	opened = append(opened, outR, outW)
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	spec = &sandbox.Spec{
		ID:         id,
		Plugin:     u.name,
		Root:       rec.Dir,
		Entrypoint: rec.Manifest.Entrypoint,
		Args:       rec.Manifest.Args,
		Env: []string{
			"PATH=/usr/local/bin:/usr/bin:/bin",
			"HOME=/tmp",
			"DIMPLUGD_PLUGIN=" + u.name,
			"DIMPLUGD_INSTANCE=" + id,
		},
		Control: theirs,
		Lane:    theirLane,
		Frames:  theirFrames,
		Stdout:  outW,
		Stderr:  errW,
		Limits:  limitsFromGrant(rec.Grant),
		Mounts:  mountsFromGrant(rec.Grant),
	}
	closeTheirs = func() {
		theirs.Close()
		theirLane.Close()
		theirFrames.Close()
		outW.Close()
		errW.Close()
	}
	return &launch{id: id, key: specKey(rec), nc: nc, lane: lane, frames: fc, outR: outR, errR: errR}, spec, closeTheirs, nil
}

// socketpair returns the daemon's end as a net.Conn and the plugin's as a
// file to pass on.
func socketpair(what string) (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s socket: %w", what, err)
	}
	ours := os.NewFile(uintptr(fds[0]), what)
	theirs := os.NewFile(uintptr(fds[1]), what+"-plugin")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("%s socket: %w", what, err)
	}
	return c, theirs, nil
}

// prepareStandby sets up the plugin's next instance ahead of need, when the
// runtime can: a restart then costs little more than the plugin's own
// start-up. Failure only costs the speed-up.
func (u *unit) prepareStandby(ctx context.Context, rec registry.Record) {
	pr, ok := u.d.cfg.Runtime.(sandbox.Preparer)
	if !ok || !u.d.sup.Standby {
		return
	}
	u.mu.Lock()
	has := u.standby != nil
	u.mu.Unlock()
	if has {
		return
	}
	l, spec, closeTheirs, err := u.newLaunch(rec)
	if err != nil {
		return
	}
	pp, err := pr.PrepareInstance(ctx, spec)
	closeTheirs()
	if err != nil {
		l.close()
		u.logf("could not prepare a standby sandbox: %v", err)
		return
	}
	l.prepared = pp
	u.mu.Lock()
	u.standby = l
	u.mu.Unlock()
}

// takeStandby returns the prepared instance if it matches rec; a stale one
// is discarded.
func (u *unit) takeStandby(rec registry.Record) *launch {
	u.mu.Lock()
	l := u.standby
	u.standby = nil
	u.mu.Unlock()
	if l == nil {
		return nil
	}
	if l.key != specKey(rec) {
		l.close()
		return nil
	}
	return l
}

// dropStandby discards the prepared instance, if any.
func (u *unit) dropStandby() {
	u.mu.Lock()
	l := u.standby
	u.standby = nil
	u.mu.Unlock()
	if l != nil {
		l.close()
	}
}

// start spawns an instance (from the standby when there is one) and
// completes the handshake.
func (u *unit) start(ctx context.Context) (*instance, error) {
	u.mu.Lock()
	u.takePendingLocked() // no instance to start it beside
	rec := u.rec
	_ = u.transitionLocked(startingState{})
	u.mu.Unlock()
	if !u.d.cfg.Runtime.Sandboxed() {
		u.logf("WARNING: starting WITHOUT a sandbox (runtime %q): this plugin can do anything the daemon can", u.d.cfg.Runtime.Name())
		u.d.log.Warn("starting plugin without a sandbox", "plugin", u.name)
	}

	var proc sandbox.Process
	how := "started"
	l := u.takeStandby(rec)
	if l != nil {
		pp := l.prepared
		l.prepared = nil
		var err error
		if proc, err = pp.Start(ctx); err != nil {
			u.logf("standby sandbox %s failed to start (%v); starting a new one", l.id, err)
			l.close()
			l = nil
		} else {
			how = "started pre-started"
		}
	}
	if l == nil {
		var spec *sandbox.Spec
		var closeTheirs func()
		var err error
		if l, spec, closeTheirs, err = u.newLaunch(rec); err != nil {
			return nil, err
		}
		proc, err = u.d.cfg.Runtime.Start(ctx, spec)
		closeTheirs()
		if err != nil {
			l.close()
			return nil, fmt.Errorf("start: %w", err)
		}
	}
	return u.connect(ctx, l, proc, rec, how, time.Now())
}

// adopt takes over an instance an upgrading daemon handed over: the same
// handshake as a new instance, on the control socket it was given for this.
func (u *unit) adopt(ctx context.Context, a *adoption) (*instance, error) {
	u.mu.Lock()
	rec := u.rec
	if a.hp.Seq > u.seq {
		u.seq = a.hp.Seq // the next instance ids stay unique
	}
	u.restarts += a.hp.Restarts
	_ = u.transitionLocked(startingState{})
	u.mu.Unlock()
	return u.connect(ctx, a.l, a.proc, rec, "adopted from the daemon before the upgrade:", a.hp.Started)
}

// connect completes an instance whose process runs: its output goes to
// the plugin's log, the handshake, then its lane and frame socket.
func (u *unit) connect(ctx context.Context, l *launch, proc sandbox.Process, rec registry.Record, how string, started time.Time) (*instance, error) {
	inst, err := u.open(ctx, l, proc, rec, how, started)
	if err != nil {
		return nil, err
	}
	if err := u.transition(runningState{inst: inst}); err != nil { // a supervisor bug; not served half-registered
		u.teardown(inst)
		return nil, err
	}
	u.logf("instance %s ready (protocol v%d)", l.id, inst.version)
	u.prepareStandby(ctx, rec)
	return inst, nil
}

// open starts serving an instance whose process runs: its output goes to
// the plugin's log, the handshake, then its lane and frame socket. It does
// not change the unit's state.
func (u *unit) open(ctx context.Context, l *launch, proc sandbox.Process, rec registry.Record, how string, started time.Time) (*instance, error) {
	inst := &instance{id: l.id, proc: proc, started: started, ioDone: make(chan struct{}), outR: l.outR, errR: l.errR}
	outR, errR := l.outR, l.errR
	go func() { // owned by the instance; ends when the plugin's output closes
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); u.logs.Copy(logbuf.Stdout, outR) }()
		go func() { defer wg.Done(); u.logs.Copy(logbuf.Stderr, errR) }()
		wg.Wait()
		close(inst.ioDone)
	}()
	inst.conn = wire.NewConnLimited(l.nc, capnp.Client{}, rpcLogger{}, u.d.pluginWireLimits())
	u.logf("%s instance %s (pid %d, runtime %s)", how, l.id, proc.Pid(), u.d.cfg.Runtime.Name())

	caps, err := u.handshake(ctx, inst, rec)
	if caps.lane && l.lane != nil {
		inst.lane = wire.NewLaneClient(l.lane)
	} else if l.lane != nil {
		l.lane.Close()
	}
	inst.rebind = caps.rebind
	if caps.frames && err == nil {
		inst.frames = u.d.hub.attach(l.frames, fmt.Sprintf("plugin %q", u.name), u)
	} else {
		l.frames.Close()
	}
	if err != nil {
		// Say how the process ended if it did, which is usually the
		// real story ("exited with code 2").
		select {
		case <-proc.Done():
			err = fmt.Errorf("%w (the plugin %s)", err, proc.Wait())
		case <-time.After(100 * time.Millisecond):
		}
		u.teardown(inst)
		return nil, err
	}
	return inst, nil
}

// takeAdopted returns the handed-over instance waiting for the run loop,
// if any, and forgets it.
func (u *unit) takeAdopted() *adoption {
	u.mu.Lock()
	defer u.mu.Unlock()
	a := u.adopted
	u.adopted = nil
	return a
}

// pluginCaps is what a plugin said it serves besides RPC.
type pluginCaps struct{ lane, frames, rebind bool }

// handshake negotiates with a new instance and reports what it serves.
func (u *unit) handshake(ctx context.Context, inst *instance, rec registry.Record) (caps pluginCaps, err error) {
	hctx, cancel := context.WithTimeout(ctx, u.d.sup.StartTimeout)
	defer cancel()
	boot := schema.PluginBootstrap(inst.conn.Bootstrap(hctx))
	defer boot.Release()
	fut, release := boot.Handshake(hctx, func(p schema.PluginBootstrap_handshake_Params) error {
		if err := wire.WriteVersions(p.NewDaemonVersions, u.d.versions); err != nil {
			return err
		}
		svc, err := p.NewServices()
		if err != nil {
			return err
		}
		if err := svc.SetLog(schema.Logger_ServerToClient(&logServer{u: u})); err != nil {
			return err
		}
		if err := svc.SetKv(schema.KeyValue_ServerToClient(&kvServer{kv: u.d.store.KV(u.name)})); err != nil {
			return err
		}
		if len(rec.Grant.OutboundHosts) > 0 {
			if err := svc.SetFetch(schema.Fetcher_ServerToClient(newFetchServer(u.name, rec.Grant, u.d.cfg.Resolver))); err != nil {
				return err
			}
		}
		if !rec.Manifest.Settings.IsZero() {
			if err := svc.SetSettings(schema.Settings_ServerToClient(newSettingsServer(u))); err != nil {
				return err
			}
		}
		info, err := p.NewInstance()
		if err != nil {
			return err
		}
		info.SetSandboxed(u.d.cfg.Runtime.Sandboxed())
		if err := info.SetInstanceId(inst.id); err != nil {
			return err
		}
		return info.SetName(u.name)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		if hctx.Err() == context.DeadlineExceeded {
			return caps, fmt.Errorf("no handshake within %s", u.d.sup.StartTimeout)
		}
		return caps, fmt.Errorf("handshake: %s", wire.RemoteMessage(err))
	}
	theirs, err := wire.ReadVersions(res.PluginVersions())
	if err != nil {
		return caps, fmt.Errorf("handshake: %w", err)
	}
	if res.Version() == 0 {
		_, err := schema.Negotiate("plugin", "the daemon", fmt.Sprintf("plugin %q", u.name), u.d.versions, theirs)
		if err == nil {
			err = fmt.Errorf("plugin %q refused every version the daemon offered", u.name)
		}
		return caps, &permanentError{err}
	}
	inst.version = res.Version()
	info, err := res.Info()
	if err != nil {
		return caps, fmt.Errorf("handshake: %w", err)
	}
	if name, _ := info.Name(); name != u.name {
		return caps, &permanentError{fmt.Errorf("handshake: the plugin calls itself %q, but is installed as %q: answer PluginInfo.name with the name the handshake's InstanceInfo gave", termesc.String(name), u.name)}
	}
	pl, err := info.Phases()
	if err != nil {
		return caps, fmt.Errorf("handshake: %w", err)
	}
	have := map[schema.Phase]bool{}
	for i := 0; i < pl.Len(); i++ {
		have[pl.At(i)] = true
	}
	for _, h := range rec.Manifest.Hooks {
		if p := phaseOf(h.Phase); !have[p] {
			return caps, &permanentError{missingHandler(h.Phase, h.Name)}
		}
	}
	roles, err := servedRoles(info)
	if err != nil {
		return caps, fmt.Errorf("handshake: %w", err)
	}
	for _, st := range rec.Manifest.Streams {
		if !info.Frames() {
			return caps, &permanentError{missingFrames(st.Name)}
		}
		if roles != nil && !roles[st.Role] {
			return caps, &permanentError{missingRole(st.Role, st.Name)}
		}
	}
	inst.plugin = res.Plugin().AddRef()
	return pluginCaps{lane: info.Lane(), frames: info.Frames(), rebind: info.Rebind() && info.Frames()}, nil
}

// supervise watches a running instance until it ends or should stop. It
// reports why, and whether that was a crash, and the instance that ended:
// an upgrade started beside it replaces it (see upgradeBeside).
func (u *unit) supervise(ctx context.Context, inst *instance) (_ *instance, reason string, crash bool) {
	sup := u.d.sup
	tick := time.NewTicker(sup.HealthInterval)
	defer tick.Stop()
	fails := 0
	var framesGone <-chan struct{} // nil: the plugin takes no streams
	if inst.frames != nil {
		framesGone = inst.frames.goneCh
	}
	for {
		select {
		case <-inst.proc.Done():
			return inst, "the plugin " + inst.proc.Wait().String(), true
		case <-framesGone:
			// A plugin without its frame socket cannot serve its
			// stages: restart it rather than show it running.
			if r := inst.frames.cutReason(); r != "" {
				return inst, "the plugin broke the frame protocol: it " + r, true
			}
			select { // most often, the plugin is on its way out
			case <-inst.proc.Done():
				return inst, "the plugin " + inst.proc.Wait().String(), true
			case <-time.After(sup.StopGrace):
				return inst, "the plugin closed its frame socket", true
			}
		case <-inst.conn.Done():
			// The plugin closed its control socket; it is on its way out.
			select {
			case <-inst.proc.Done():
				return inst, "the plugin " + inst.proc.Wait().String(), true
			case <-time.After(sup.StopGrace):
				return inst, "the plugin closed its control socket", true
			}
		case <-ctx.Done():
			return inst, "the daemon is shutting down", false
		case <-u.kick:
			u.mu.Lock()
			restart, want := u.restartReq, u.wantedLocked()
			u.mu.Unlock()
			switch {
			case !want:
				return inst, "stopped by the operator", false
			case restart:
				return inst, "restart requested by the operator", false
			}
			if up := u.takePending(); up != nil {
				if next := u.upgradeBeside(ctx, inst, up); next != nil {
					inst, fails, framesGone = next, 0, nil
					if inst.frames != nil {
						framesGone = inst.frames.goneCh
					}
				}
			}
		case <-tick.C:
			if err := u.checkHealth(ctx, inst); err != nil {
				fails++
				u.logf("health check failed (%d of %d): %v", fails, sup.HealthFailures, err)
				if fails >= sup.HealthFailures {
					return inst, fmt.Sprintf("failed %d health checks in a row (last: %v)", fails, err), true
				}
			} else {
				fails = 0
			}
		}
	}
}

func (u *unit) checkHealth(ctx context.Context, inst *instance) error {
	hctx, cancel := context.WithTimeout(ctx, u.d.sup.HealthTimeout)
	defer cancel()
	fut, release := inst.plugin.Health(hctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		if hctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("no answer within %s", u.d.sup.HealthTimeout)
		}
		return errors.New(wire.RemoteMessage(err))
	}
	if !res.Ok() {
		detail, _ := res.Detail()
		return fmt.Errorf("plugin reports unhealthy: %s", detail)
	}
	return nil
}

// stop ends an instance gracefully: the shutdown call, then SIGTERM, then
// SIGKILL.
func (u *unit) stop(inst *instance, reason string) {
	sup := u.d.sup
	u.logf("stopping instance %s: %s", inst.id, reason)
	ctx, cancel := context.WithTimeout(context.Background(), sup.StopGrace)
	fut, release := inst.plugin.Stop(ctx, func(p schema.Plugin_stop_Params) error { return p.SetReason(reason) })
	_, _ = fut.Struct()
	release()
	cancel()
	select {
	case <-inst.proc.Done():
	case <-time.After(sup.StopGrace):
		u.logf("instance %s still running %s after the shutdown call; sending SIGTERM", inst.id, sup.StopGrace)
		_ = inst.proc.Signal(syscall.SIGTERM)
		select {
		case <-inst.proc.Done():
		case <-time.After(sup.TermGrace):
			u.logf("instance %s ignored SIGTERM for %s; killing it", inst.id, sup.TermGrace)
		}
	}
	u.teardown(inst)
	u.mu.Lock()
	u.lastExit = "stopped: " + reason
	u.mu.Unlock()
}

// teardown releases everything an instance holds. The process is killed if
// it still runs.
func (u *unit) teardown(inst *instance) {
	var standby *launch
	u.mu.Lock()
	if r, ok := u.state.(runningState); ok && r.inst == inst { // a crashed one is in backoff already
		_ = u.transitionLocked(stoppedState{why: "stopping"})
		if !u.wantedLocked() { // disabled or removed: no standby outlives the state change
			standby, u.standby = u.standby, nil
		}
	}
	u.mu.Unlock()
	if standby != nil {
		standby.close()
	}
	inst.plugin.Release()
	if inst.lane != nil {
		inst.lane.Close()
	}
	if inst.frames != nil {
		inst.frames.conn.Close() // its reader goroutine cleans up its streams
	}
	inst.conn.Close()
	if err := inst.proc.Destroy(); err != nil {
		u.d.log.Warn("destroy plugin instance", "plugin", u.name, "instance", inst.id, "err", err)
	}
	select {
	case <-inst.ioDone:
	case <-time.After(2 * time.Second):
		u.d.log.Warn("plugin output still open after the instance ended", "plugin", u.name, "instance", inst.id)
	}
}

// framePeer returns the running instance's frame connection, or nil.
func (u *unit) framePeer() *framePeer {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.inst == nil {
		return nil
	}
	return u.inst.frames
}

// pluginRef is how to call a running instance: its hook lane when it
// serves one, else its Plugin capability.
type pluginRef struct {
	lane   *wire.LaneClient
	plugin schema.Plugin // a reference of the caller's, released by release
	calls  *atomic.Int64 // the instance's count of references out
}

func (r pluginRef) release() {
	r.plugin.Release()
	if r.calls != nil {
		r.calls.Add(-1)
	}
}

// client returns how to call the running instance, or an error saying why
// there is none. The caller releases the reference.
func (u *unit) client() (pluginRef, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch s := u.state.(type) {
	case runningState:
		s.inst.calls.Add(1)
		if s.inst.lane != nil {
			return pluginRef{lane: s.inst.lane, calls: &s.inst.calls}, nil
		}
		return pluginRef{plugin: s.inst.plugin.AddRef(), calls: &s.inst.calls}, nil
	case quarantinedState:
		return pluginRef{}, &notRunning{cause: causeQuarantined, msg: fmt.Sprintf("is not running (%s: %s)", s.name(), s.detail())}
	case backoffState, failedState:
		return pluginRef{}, &notRunning{cause: causeNotRunning, msg: fmt.Sprintf("is not running (%s: %s)", s.name(), s.detail())}
	case startingState:
		return pluginRef{}, &notRunning{cause: causeStarting, msg: "is not running (starting)"}
	}
	return pluginRef{}, &notRunning{cause: causeNotRunning, msg: fmt.Sprintf("is not running (%s)", u.state.name())}
}

// notRunning is client's error: why no call can be made, and its cause
// for the counts.
type notRunning struct{ cause, msg string }

func (e *notRunning) Error() string { return e.msg }

// The causes of answers by policy, as `dimplugctl inspect` counts them
// (schema CauseCount).
const (
	causeNotRunning  = "not running"
	causeQuarantined = "quarantined"
	causeStarting    = "starting"
	causeBreaker     = "breaker open"
	causeDeadline    = "deadline"
	causeCrashed     = "crashed"
	causeFailed      = "failed"
	causeRejected    = "rejected"
	causeCancelled   = "cancelled"
)

// policyCounts counts one hook's answers by policy, by cause.
type policyCounts struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (c *policyCounts) add(cause string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[cause]++
	c.mu.Unlock()
}

// snapshot returns the counts, causes in a stable order.
func (c *policyCounts) snapshot() (causes []string, counts []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.n {
		causes = append(causes, k)
	}
	sort.Strings(causes)
	for _, k := range causes {
		counts = append(counts, c.n[k])
	}
	return causes, counts
}

// policy returns the answers-by-policy counts of hook name.
func (u *unit) policy(name string) *policyCounts {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.policyCounts == nil {
		u.policyCounts = map[string]*policyCounts{}
	}
	c, ok := u.policyCounts[name]
	if !ok {
		c = &policyCounts{}
		u.policyCounts[name] = c
	}
	return c
}

func phaseOf(p manifest.Phase) schema.Phase {
	switch p {
	case manifest.PhaseResponse:
		return schema.Phase_response
	case manifest.PhaseRoute:
		return schema.Phase_route
	case manifest.PhaseObserve:
		return schema.Phase_observe
	}
	return schema.Phase_request
}

func limitsFromGrant(g manifest.Permissions) sandbox.Limits {
	return sandbox.Limits{
		MemoryBytes: int64(g.Memory),
		Pids:        g.Pids,
		CPU:         g.CPU,
		TmpBytes:    int64(g.Tmp),
		OpenFiles:   g.OpenFiles,
	}.WithDefaults()
}

func mountsFromGrant(g manifest.Permissions) []sandbox.Mount {
	var ms []sandbox.Mount
	for _, p := range g.ReadOnlyPaths {
		ms = append(ms, sandbox.Mount{Source: p, Target: p})
	}
	return ms
}

// rpcLogger routes the rpc package's log to nowhere: a plugin closing its
// connection is reported by the supervisor in its own words.
type rpcLogger struct{}

func (rpcLogger) Debug(string, ...any) {}
func (rpcLogger) Info(string, ...any)  {}
func (rpcLogger) Warn(string, ...any)  {}
func (rpcLogger) Error(string, ...any) {}
