package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// Installs and upgrades are transactions (issue #14).
//
// A fresh install with InstallOptions.Wait answers once the plugin runs and
// passed a health check; if it crashes or fails before that, or is not
// running within startBound, it is removed again and the install fails
// with the reason (its exit and last log lines).
//
// An upgrade (install --replace) commits the new files and record with the
// replaced record kept as the plugin's previous version (registry
// Previous: files, manifest, grant and a copy of the key-value data). When
// the old version is running, the run loop starts the new version beside
// it (upgradeBeside); calls keep going to the old instance until the new
// one has shaken hands, passed a health check and stayed up for a moment;
// then the unit switches to it in one state change, the route table is
// rebuilt, the calls already on the old instance finish, and the old
// instance is stopped. No call is refused because of the upgrade. When
// the old version is not running, the new one is started in its place.
// Either way, if the new version does not become healthy, the registry is
// rolled back (Store.Rollback: previous record, files, grant and data as
// they were when the upgrade was committed; the new version's files are
// deleted) and the old version keeps (or starts) running. Without Wait,
// the same happens in the background.
//
// Rollback (dimplugctl rollback) swaps the current and the previous
// version, each with its data as it was at the switch, so a second
// rollback returns to the version rolled back from. It goes through the
// same switch, and is undone the same way if the version rolled back to
// does not become healthy.

// pendingUpgrade is a new record for a unit whose instance runs, for its
// run loop to start beside it.
type pendingUpgrade struct {
	rec registry.Record
	// progress is told the stages of the switch (registry.InstallOptions
	// .Progress); nil when no one listens.
	progress func(stage string, done, total uint64)
	// done gets the outcome when the run loop started the new version
	// beside the old one (capacity 1).
	done chan error
	// inPlace is closed when the run loop started the unit afresh
	// instead (the old instance had ended): the new record is then
	// started like any other.
	inPlace chan struct{}
}

// report tells the upgrade's listener, if any, that stage begins.
func (up *pendingUpgrade) report(stage string) {
	if up.progress != nil {
		up.progress(stage, 0, 0)
	}
}

// settleDelay is how long a new version started beside the old one must
// stay up and healthy before calls switch to it.
func (d *Daemon) settleDelay() time.Duration {
	return min(d.sup.HealthInterval, 500*time.Millisecond)
}

// startBound is how long a plugin may take to become healthy after its
// install.
func (d *Daemon) startBound() time.Duration {
	return d.sup.StartTimeout + d.sup.HealthTimeout + d.settleDelay() + 5*time.Second
}

// takePending returns the upgrade waiting for the run loop, if any.
func (u *unit) takePending() *pendingUpgrade {
	u.mu.Lock()
	defer u.mu.Unlock()
	up := u.pending
	u.pending = nil
	return up
}

// takePendingLocked turns a waiting upgrade into the unit's record, for a
// start that has no instance to start it beside.
func (u *unit) takePendingLocked() {
	if up := u.pending; up != nil {
		u.pending = nil
		u.rec = up.rec
		close(up.inPlace)
	}
}

// upgradeBeside starts the pending version next to the running instance
// old and switches to it once it is ready, returning it; or, reporting why
// to up.done, it tears the new one down and returns nil, old still
// serving.
func (u *unit) upgradeBeside(ctx context.Context, old *instance, up *pendingUpgrade) *instance {
	rec := up.rec
	u.logf("starting version %s beside instance %s", rec.Manifest.Version, old.id)
	inst, err := u.startBeside(ctx, rec)
	if err != nil {
		up.done <- err
		return nil
	}
	up.report("waiting")
	if err := u.ready(ctx, inst); err != nil {
		u.teardown(inst)
		up.done <- err
		return nil
	}
	up.report("switching")
	u.mu.Lock()
	err = u.transitionLocked(runningState{inst: inst})
	if err == nil {
		u.rec = rec
	}
	u.mu.Unlock()
	if err != nil { // a supervisor bug
		u.teardown(inst)
		up.done <- err
		return nil
	}
	u.d.rebuildRoutes()
	u.logf("instance %s ready (protocol v%d): version %s now serves; stopping instance %s", inst.id, inst.version, rec.Manifest.Version, old.id)
	// The old instance goes before the upgrade is reported done: hosts'
	// direct lanes to it break, and their next calls go to the new one
	// (through the daemon, which grants them new lanes).
	u.drain(old)
	u.stop(old, "upgraded to version "+rec.Manifest.Version)
	up.done <- nil
	u.prepareStandby(ctx, rec)
	return inst
}

// startBeside spawns an instance of rec and shakes hands with it without
// changing the unit's state.
func (u *unit) startBeside(ctx context.Context, rec registry.Record) (*instance, error) {
	l, spec, closeTheirs, err := u.newLaunch(rec)
	if err != nil {
		return nil, err
	}
	proc, err := u.d.cfg.Runtime.Start(ctx, spec)
	closeTheirs()
	if err != nil {
		l.close()
		return nil, fmt.Errorf("start: %w", err)
	}
	return u.open(ctx, l, proc, rec, "started (upgrade)", time.Now())
}

// ready checks that a new instance is healthy and stays up for
// settleDelay.
func (u *unit) ready(ctx context.Context, inst *instance) error {
	if err := u.checkHealth(ctx, inst); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	t := time.NewTimer(u.d.settleDelay())
	defer t.Stop()
	select {
	case <-inst.proc.Done():
		return errors.New("the plugin " + inst.proc.Wait().String())
	case <-inst.conn.Done():
		return errors.New("the plugin closed its control socket")
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	if err := u.checkHealth(ctx, inst); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	return nil
}

// drain waits, within StopGrace, for the calls already made on an
// instance no longer called to finish.
func (u *unit) drain(inst *instance) {
	deadline := time.Now().Add(u.d.sup.StopGrace)
	for inst.calls.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// notHealthy is the error of a version that did not become healthy: why,
// and the plugin's last lines of output.
func (u *unit) notHealthy(version, why string) error {
	var out []string
	for _, l := range u.logs.Tail(200) {
		if l.Stream != logbuf.Daemon {
			out = append(out, l.Text)
		}
	}
	if len(out) > 5 {
		out = out[len(out)-5:]
	}
	msg := fmt.Sprintf("plugin %q version %s did not become healthy: %s", u.name, version, why)
	if len(out) > 0 {
		msg += "\nits last output:\n  " + strings.Join(out, "\n  ")
	}
	return errdefs.New(errdefs.ErrUnavailable, msg)
}

// awaitHealthy waits until the unit runs rec and its instance passes a
// health check. It fails when the unit crashes (crashTotal passes
// crashes), fails or is quarantined, or by deadline.
func (d *Daemon) awaitHealthy(u *unit, rec registry.Record, crashes uint64, deadline time.Time) error {
	version := rec.Manifest.Version
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		u.mu.Lock()
		state, cur, crashed, last, removed := u.state, u.rec, u.crashTotal > crashes, u.lastExit, u.removed
		u.mu.Unlock()
		switch s := state.(type) {
		case runningState:
			if cur.Dir == rec.Dir {
				err := u.checkHealth(context.Background(), s.inst)
				if err == nil {
					return nil
				}
				last = "health check: " + err.Error()
			}
		case failedState, quarantinedState:
			return u.notHealthy(version, s.detail())
		}
		switch {
		case removed:
			return errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("plugin %q was removed while it started", u.name))
		case crashed:
			return u.notHealthy(version, last)
		case time.Now().After(deadline):
			why := fmt.Sprintf("not running after %s (%s)", d.startBound(), state.name())
			if last != "" {
				why += "; last: " + last
			}
			return u.notHealthy(version, why)
		}
		select {
		case <-tick.C:
		case <-u.done:
			return errdefs.New(errdefs.ErrUnavailable, "the daemon is shutting down")
		}
	}
}

// afterFreshInstall waits, with wait, for a freshly installed and enabled
// plugin to become healthy, and removes it if it does not.
func (d *Daemon) afterFreshInstall(u *unit, rec registry.Record, opts registry.InstallOptions) error {
	if !opts.Wait || !rec.Enabled {
		return nil
	}
	opts.Report("waiting", 0, 0)
	err := d.awaitHealthy(u, rec, 0, time.Now().Add(d.startBound()))
	if err == nil {
		return nil
	}
	opts.Report("rolling back", 0, 0)
	if rerr := d.undoFreshInstall(rec.Name); rerr != nil {
		return errors.Join(err, fmt.Errorf("remove it again: %w", rerr))
	}
	return fmt.Errorf("%w\nit was not installed", err)
}

// upgrade finishes an upgrade the registry committed (rec, with the
// replaced version kept as previous): it switches the unit to rec and,
// with wait, answers with the outcome.
// The caller holds the name's transaction lock; release lets go of it once
// the upgrade has settled.
func (d *Daemon) upgrade(u *unit, rec registry.Record, opts registry.InstallOptions, release func()) (registry.Record, error) {
	undo := func() (registry.Record, error) { return d.store.Rollback(rec.Name, false) }
	if rec.Enabled {
		if err := d.checkConflicts(rec.Name, &rec.Manifest); err != nil {
			defer release()
			if _, rerr := undo(); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return registry.Record{}, err
		}
	}
	done := d.switchTo(u, rec, undo, opts.Progress, release)
	if !opts.Wait {
		return rec, nil
	}
	if err := <-done; err != nil {
		return registry.Record{}, err
	}
	return rec, nil
}

// Rollback returns a plugin to its previous version (see the comment at
// the top of this file), waiting for it to become healthy.
func (d *Daemon) Rollback(name string) (registry.Record, error) {
	u, err := d.unit(name)
	if err != nil {
		return registry.Record{}, err
	}
	release := d.txLocks.lock(name)
	from := u.record().Manifest.Version
	rec, err := d.store.Rollback(name, true)
	if err != nil {
		release()
		return registry.Record{}, err
	}
	u.logf("rolling back from version %s to version %s", from, rec.Manifest.Version)
	d.log.Info("plugin rolled back", "plugin", name, "from", from, "to", rec.Manifest.Version)
	if err := <-d.switchTo(u, rec, func() (registry.Record, error) { return d.store.Rollback(name, true) }, nil, release); err != nil {
		return registry.Record{}, err
	}
	return rec, nil
}

func (u *unit) record() registry.Record {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.rec
}

// switchTo moves the unit to rec, beside its running instance when there
// is one, else in its place; if rec does not become healthy it calls undo
// (which restores the registry) and returns the unit to the record undo
// returns. The outcome is sent on the returned channel. The caller holds
// the name's transaction lock; switchTo calls release once settled.
func (d *Daemon) switchTo(u *unit, rec registry.Record, undo func() (registry.Record, error), progress func(stage string, done, total uint64), release func()) <-chan error {
	report := func(stage string) {
		if progress != nil {
			progress(stage, 0, 0)
		}
	}
	report("starting")
	u.mu.Lock()
	_, running := u.state.(runningState)
	var up *pendingUpgrade
	if running && rec.Enabled && !u.removed {
		up = &pendingUpgrade{rec: rec, done: make(chan error, 1), inPlace: make(chan struct{}), progress: progress}
		u.pending = up
	} else {
		u.rec = rec
		u.letBackLocked("reinstalled", StateFailed)
		u.restartReq = true
	}
	crashes := u.crashTotal
	u.mu.Unlock()
	if up == nil {
		d.rebuildRoutes()
	}
	u.poke()
	out := make(chan error, 1)
	go func() {
		defer release()
		err := d.settle(u, rec, up, crashes, report)
		if err == nil {
			if !rec.Manifest.Settings.IsZero() {
				d.checkSettingsAfterUpgrade(u)
			}
			out <- nil
			return
		}
		report("rolling back")
		out <- d.undo(u, up, err, undo)
	}()
	return out
}

// settle waits for the outcome of switchTo.
func (d *Daemon) settle(u *unit, rec registry.Record, up *pendingUpgrade, crashes uint64, report func(string)) error {
	deadline := time.Now().Add(d.startBound())
	if up != nil {
		select {
		case err := <-up.done:
			if err != nil {
				return u.notHealthy(rec.Manifest.Version, err.Error())
			}
			return nil
		case <-up.inPlace:
		case <-u.done:
			return errdefs.New(errdefs.ErrUnavailable, "the daemon is shutting down")
		}
	}
	if !rec.Enabled {
		return nil
	}
	report("waiting")
	return d.awaitHealthy(u, rec, crashes, deadline)
}

// undo rolls back a switch that failed with why.
func (d *Daemon) undo(u *unit, up *pendingUpgrade, why error, undo func() (registry.Record, error)) error {
	u.logf("%v; rolling back", why)
	prev, err := undo()
	if err != nil {
		return errors.Join(why, fmt.Errorf("roll back: %w", err))
	}
	u.mu.Lock()
	if up != nil && u.pending == up {
		u.pending = nil
	}
	if u.rec.Dir != prev.Dir { // the failed version was started in place
		u.letBackLocked("rolled back", StateFailed, StateQuarantined)
		u.crashes = nil
		u.restartReq = true
	}
	u.rec = prev
	u.mu.Unlock()
	d.rebuildRoutes()
	u.poke()
	u.logf("rolled back to version %s", prev.Manifest.Version)
	d.log.Warn("plugin upgrade rolled back", "plugin", u.name, "to", prev.Manifest.Version, "why", why)
	return fmt.Errorf("%w\nrolled back to version %s (its files, grant and data as they were before)", why, prev.Manifest.Version)
}

// nameLocks serializes the transactions on each plugin name: installs
// from before their commit (registry.InstallOptions.Claim), upgrades and
// rollbacks until they have settled. A second upgrade of a plugin thus
// commits against the outcome of the first, never beside it: otherwise the
// first one's rollback would undo the second's commit. The zero value is
// ready to use.
type nameLocks struct {
	mu sync.Mutex
	m  map[string]*nameLock
}

type nameLock struct {
	sync.Mutex
	refs int // holders and waiters; the entry goes when it drops to 0
}

// lock waits for the name's lock and returns the function that lets go of
// it; calling that more than once is harmless.
func (l *nameLocks) lock(name string) (release func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*nameLock{}
	}
	nl := l.m[name]
	if nl == nil {
		nl = &nameLock{}
		l.m[name] = nl
	}
	nl.refs++
	l.mu.Unlock()
	nl.Lock()
	var once sync.Once
	return func() {
		once.Do(func() {
			nl.Unlock()
			l.mu.Lock()
			if nl.refs--; nl.refs == 0 {
				delete(l.m, name)
			}
			l.mu.Unlock()
		})
	}
}
