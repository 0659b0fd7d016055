package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// control serves the control face for one CLI connection. It is a thin
// adapter: each method calls the daemon's in-process operation and writes
// the plugin's resulting status.
type control struct{ d *Daemon }

// Errors the control face reports.
var (
	// ErrConflict reports two plugins claiming the same route; it is of
	// class errdefs.ErrConflict.
	ErrConflict = errdefs.New(errdefs.ErrConflict, "route conflict")
	// ErrNeedsApproval reports an upgrade asking for permissions the
	// operator has not granted; it is of class errdefs.ErrConflict.
	ErrNeedsApproval = errdefs.New(errdefs.ErrConflict, "new permissions need approval")
)

// Install installs (or with opts.Replace, upgrades) a plugin from a tar
// archive of its directory.
func (d *Daemon) Install(ctx context.Context, archive []byte, opts registry.InstallOptions) (registry.Record, error) {
	if opts.PackageSize == 0 {
		opts.PackageSize = int64(len(archive))
	}
	return d.InstallFrom(ctx, bytes.NewReader(archive), opts)
}

// InstallFrom is Install reading the archive (a tar, tar.gz or .dimplug
// stream) from r, which it does not buffer.
func (d *Daemon) InstallFrom(ctx context.Context, archive io.Reader, opts registry.InstallOptions) (registry.Record, error) {
	enable := opts.Enable
	opts.Enable = false // enabled below, after the conflict check
	opts.Check = func(m *manifest.Manifest, prev *registry.Record) error {
		if err := checkFitsMachine(thisMachine(), m, opts.Grant, prev); err != nil {
			return err
		}
		if prev == nil || opts.Grant != nil {
			return nil
		}
		// An upgrade keeps the old grant; asking for more needs the
		// operator's approval again.
		if more := m.Permissions.Exceeds(prev.Grant); len(more) > 0 {
			return fmt.Errorf("%w: version %s asks for more than the operator granted to version %s:\n  - %s\napprove it with: dimplugctl install --replace <dir>",
				ErrNeedsApproval, m.Version, prev.Manifest.Version, strings.Join(more, "\n  - "))
		}
		return nil
	}
	opts.KeepPrevious = true // an upgrade is undone, or rolled back, to it (transaction.go)
	// The name's transaction lock, from before the commit until this
	// install has settled (an upgrade hands it on to switchTo).
	release := func() {}
	opts.Claim = func(name string) { release = d.txLocks.lock(name) }
	rec, err := d.store.InstallArchive(ctx, archive, opts)
	if err != nil {
		release()
		return registry.Record{}, err
	}
	d.mu.Lock()
	u, existed := d.units[rec.Name]
	if !existed {
		u = d.addUnitLocked(rec, nil)
	}
	d.mu.Unlock()
	u.logf("installed version %s", rec.Manifest.Version)
	kept := rec.KeptData
	if !existed {
		d.noteTakenOver(u, kept)
	}
	d.log.Info("plugin installed", "plugin", rec.Name, "version", rec.Manifest.Version, "replace", existed)
	if existed {
		if rec, err = d.upgrade(u, rec, opts, release); err == nil && enable && !rec.Enabled {
			return d.Enable(rec.Name) // a disabled plugin: its upgrade is in place
		}
		return rec, err
	}
	defer release()
	if enable {
		name := rec.Name
		opts.Report("starting", 0, 0)
		if rec, err = d.Enable(name); err != nil {
			opts.Report("rolling back", 0, 0)
			if !existed { // a failed install leaves nothing behind
				if rerr := d.undoFreshInstall(name); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			return registry.Record{}, err
		}
	}
	d.rebuildRoutes()
	u.poke()
	if err := d.afterFreshInstall(u, rec, opts); err != nil {
		return registry.Record{}, err
	}
	rec.KeptData = kept
	return rec, nil
}

// Enable marks a plugin enabled and starts it.
func (d *Daemon) Enable(name string) (registry.Record, error) {
	u, err := d.unit(name)
	if err != nil {
		return registry.Record{}, err
	}
	u.mu.Lock()
	m := u.rec.Manifest
	u.mu.Unlock()
	if err := d.checkConflicts(name, &m); err != nil {
		return registry.Record{}, err
	}
	rec, err := d.store.SetEnabled(name, true)
	if err != nil {
		return registry.Record{}, err
	}
	u.mu.Lock()
	u.rec = rec
	u.letBackLocked("enabled", StateQuarantined, StateFailed)
	u.crashes, u.restarts = nil, 0
	u.mu.Unlock()
	u.logf("enabled")
	d.rebuildRoutes()
	u.poke()
	return rec, nil
}

// Disable marks a plugin disabled and stops it.
func (d *Daemon) Disable(name string) (registry.Record, error) {
	u, err := d.unit(name)
	if err != nil {
		return registry.Record{}, err
	}
	rec, err := d.store.SetEnabled(name, false)
	if err != nil {
		return registry.Record{}, err
	}
	u.mu.Lock()
	u.rec = rec
	u.mu.Unlock()
	u.logf("disabled")
	d.rebuildRoutes()
	u.poke()
	return rec, nil
}

// Restart stops and starts a plugin, lifting a quarantine.
func (d *Daemon) Restart(name string) error {
	u, err := d.unit(name)
	if err != nil {
		return err
	}
	u.mu.Lock()
	if !u.rec.Enabled {
		u.mu.Unlock()
		return errdefs.WithClass(fmt.Errorf("plugin %q is disabled: enable it instead (dimplugctl enable %s)", name, name), errdefs.ErrConflict)
	}
	u.letBackLocked("restart requested", StateQuarantined, StateFailed)
	u.crashes, u.restartReq = nil, true
	u.mu.Unlock()
	u.logf("restart requested")
	u.poke()
	return nil
}

// Remove stops a plugin and deletes it with its data.
func (d *Daemon) Remove(name string) error {
	u, err := d.unit(name)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.removed = true
	u.mu.Unlock()
	d.rebuildRoutes()
	u.poke()
	<-u.done
	d.mu.Lock()
	delete(d.units, name)
	d.mu.Unlock()
	if err := d.store.Remove(name); err != nil {
		u.closeLogs()
		return err
	}
	u.removeLogs() // the log goes with the plugin, like its data
	d.log.Info("plugin removed", "plugin", name)
	return nil
}

// SetHookDeadline overrides the deadline of one hook of a plugin (0 restores
// the manifest's).
func (d *Daemon) SetHookDeadline(name, hook string, deadline time.Duration) (registry.Record, error) {
	u, err := d.unit(name)
	if err != nil {
		return registry.Record{}, err
	}
	rec, err := d.store.SetHookDeadline(name, hook, deadline)
	if err != nil {
		return registry.Record{}, err
	}
	u.mu.Lock()
	u.rec = rec
	u.mu.Unlock()
	if deadline == 0 {
		u.logf("hook %q deadline reset to the manifest's", hook)
	} else {
		u.logf("hook %q deadline set to %s by the operator", hook, deadline)
	}
	d.rebuildRoutes()
	return rec, nil
}

// checkConflicts refuses a plugin whose route hooks overlap a route owned by
// another enabled plugin.
func (d *Daemon) checkConflicts(name string, m *manifest.Manifest) error {
	for _, h := range m.Hooks {
		if h.Phase != manifest.PhaseRoute {
			continue
		}
		mine, err := manifest.ParseRoute(h.Route)
		if err != nil {
			return err
		}
		for _, other := range d.routes.cur.Load().phases[schema.Phase_route] {
			if other.plugin == name {
				continue
			}
			if (h.Method == "*" || other.hook.Method == "*" || h.Method == other.hook.Method) && mine.Overlaps(other.route) {
				return fmt.Errorf("%w: plugin %q hook %q wants to own %s %s, which overlaps %s %s owned by plugin %q; disable one of them",
					ErrConflict, name, h.Name, h.Method, h.Route, other.hook.Method, other.hook.Route, other.plugin)
			}
		}
	}
	return nil
}

// The control face's methods: each marks its error with its class (see
// errdefs) so that dimplugctl can tell not found from invalid, here and
// only here.

func (c *control) Install(ctx context.Context, call schema.Control_install) error {
	return errdefs.ToWire(c.install(ctx, call))
}

func (c *control) List(ctx context.Context, call schema.Control_list) error {
	return errdefs.ToWire(c.list(ctx, call))
}

func (c *control) Inspect(ctx context.Context, call schema.Control_inspect) error {
	return errdefs.ToWire(c.inspect(ctx, call))
}

func (c *control) Enable(ctx context.Context, call schema.Control_enable) error {
	return errdefs.ToWire(c.enable(ctx, call))
}

func (c *control) Disable(ctx context.Context, call schema.Control_disable) error {
	return errdefs.ToWire(c.disable(ctx, call))
}

func (c *control) Remove(ctx context.Context, call schema.Control_remove) error {
	return errdefs.ToWire(c.remove(ctx, call))
}

func (c *control) Restart(ctx context.Context, call schema.Control_restart) error {
	return errdefs.ToWire(c.restart(ctx, call))
}

func (c *control) SetHookDeadline(ctx context.Context, call schema.Control_setHookDeadline) error {
	return errdefs.ToWire(c.setHookDeadline(ctx, call))
}

func (c *control) GetSettings(ctx context.Context, call schema.Control_getSettings) error {
	return errdefs.ToWire(c.getSettings(call))
}

func (c *control) SetSettings(ctx context.Context, call schema.Control_setSettings) error {
	return errdefs.ToWire(c.setSettings(call))
}

func (c *control) getSettings(call schema.Control_getSettings) error {
	name, scope, user, err := readSettingsArgs(call.Args())
	if err != nil {
		return err
	}
	ps, err := c.d.Settings(name, scope, user)
	if err != nil {
		return err
	}
	return settingsResults(call.AllocResults, ps)
}

func (c *control) setSettings(call schema.Control_setSettings) error {
	name, scope, user, err := readSettingsArgs(call.Args())
	if err != nil {
		return err
	}
	values, err := readSettingsValues(call.Args())
	if err != nil {
		return err
	}
	ps, err := c.d.SetSettings(name, scope, user, values, call.Args().Replace())
	if err != nil {
		return err
	}
	return settingsResults(call.AllocResults, ps)
}

// settingsResults writes ps into a method's results.
func settingsResults[R interface {
	NewSettings() (schema.PluginSettings, error)
}](alloc func() (R, error), ps PluginSettings) error {
	res, err := alloc()
	if err != nil {
		return err
	}
	out, err := res.NewSettings()
	if err != nil {
		return err
	}
	return writeSettings(out, ps)
}

func writeSettings(out schema.PluginSettings, ps PluginSettings) error {
	out.SetUser(ps.User)
	values, err := json.Marshal(ps.Values)
	if err != nil {
		return err
	}
	stored, err := json.Marshal(ps.Stored)
	if err != nil {
		return err
	}
	for _, set := range []func() error{
		func() error { return out.SetScope(ps.Scope) },
		func() error { return out.SetValues(values) },
		func() error { return out.SetStored(stored) },
		func() error { return out.SetSchema(ps.Schema) },
		func() error { return out.SetUi(ps.UI) },
		func() error { return out.SetProblem(ps.Problem) },
	} {
		if err := set(); err != nil {
			return err
		}
	}
	return nil
}

func (c *control) Status(ctx context.Context, call schema.Control_status) error {
	return errdefs.ToWire(c.status(ctx, call))
}

func (c *control) Logs(ctx context.Context, call schema.Control_logs) error {
	return errdefs.ToWire(c.logs(ctx, call))
}

func (c *control) install(ctx context.Context, call schema.Control_install) error {
	archive, opts, err := readInstallArgs(call.Args())
	if err != nil {
		return err
	}
	o, _ := call.Args().Options() // read above
	opts.Package = c.d.packageCheck(o.AllowUnsigned(), true, new(*registry.TrustedKey))
	rec, err := c.d.Install(ctx, archive, opts)
	if err != nil {
		return err
	}
	return installedInto(c.d, call.AllocResults, rec)
}

func (c *control) list(ctx context.Context, call schema.Control_list) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	us := c.d.sortedUnits()
	l, err := res.NewPlugins(int32(len(us)))
	if err != nil {
		return err
	}
	for i, u := range us {
		if err := c.d.writeStatus(l.At(i), u); err != nil {
			return err
		}
	}
	return nil
}

func (c *control) inspect(ctx context.Context, call schema.Control_inspect) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}

func (c *control) enable(ctx context.Context, call schema.Control_enable) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	if _, err := c.d.Enable(name); err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}

func (c *control) disable(ctx context.Context, call schema.Control_disable) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	if _, err := c.d.Disable(name); err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}

func (c *control) remove(ctx context.Context, call schema.Control_remove) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	call.Go()
	return c.d.Remove(name)
}

func (c *control) restart(ctx context.Context, call schema.Control_restart) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	if err := c.d.Restart(name); err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}

func (c *control) setHookDeadline(ctx context.Context, call schema.Control_setHookDeadline) error {
	name, hook, deadline, err := readSetHookDeadlineArgs(call.Args())
	if err != nil {
		return err
	}
	if _, err := c.d.SetHookDeadline(name, hook, deadline); err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}

func (c *control) status(ctx context.Context, call schema.Control_status) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	st, err := res.NewDaemon()
	if err != nil {
		return err
	}
	d := c.d
	if err := st.SetVersion(Version); err != nil {
		return err
	}
	if err := wire.WriteVersions(st.NewProtocolVersions, d.versions); err != nil {
		return err
	}
	if err := st.SetRuntime(d.cfg.Runtime.Name()); err != nil {
		return err
	}
	st.SetSandboxed(d.cfg.Runtime.Sandboxed())
	if err := st.SetStateDir(d.cfg.StateDir); err != nil {
		return err
	}
	if err := st.SetSocket(d.cfg.Socket); err != nil {
		return err
	}
	st.SetStartedAtUnixMs(d.started.UnixMilli())
	counts := d.Counts()
	st.SetPlugins(uint32(counts.Installed))
	st.SetReady(d.Ready())
	st.SetUptimeMillis(uint64(time.Since(d.started) / time.Millisecond))
	return writeStatusExtras(st, counts, d.MetricsAddr())
}

func (c *control) logs(ctx context.Context, call schema.Control_logs) error {
	args := call.Args()
	name, err := argName(args)
	if err != nil {
		return err
	}
	u, err := c.d.unit(name)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	var sub *logbuf.Subscription
	var lines []logbuf.Line
	tail := int(args.Tail())
	if args.HasSink() {
		lines, sub = u.logs.TailAndSubscribe(tail)
	} else {
		lines = u.logs.Tail(tail)
	}
	if tail > len(lines) && len(lines) > 0 {
		// Memory holds fewer lines than asked for: the older ones come
		// from the plugin's files, those numbered before the oldest line
		// in memory. (Memory is empty only when the files are.)
		lines = append(u.olderLogs(tail-len(lines), lines[0].Seq), lines...)
	}
	// The answer holds at most the plugin's log byte cap of text
	// (Config.LogBytes) and fileHistoryBytes from its files, plus about
	// 40 bytes per line.
	l, err := res.NewLines(int32(len(lines)))
	if err != nil {
		if sub != nil {
			sub.Close()
		}
		return err
	}
	for i, ln := range lines {
		if err := writeLogLine(l.At(i), ln); err != nil {
			if sub != nil {
				sub.Close()
			}
			return err
		}
	}
	if sub != nil {
		c.d.follow(u, sub, args.Sink().AddRef())
	}
	return nil
}

// Each push of `logs -f` holds at most followBatchLines lines and
// followBatchBytes bytes of text (or one line, cut to the line cap, when
// that line alone is larger).
const (
	followBatchLines = 256
	followBatchBytes = 256 << 10
)

// follow pushes new log lines to a sink until a push fails, the plugin is
// removed or the daemon closes. The goroutine is owned by the daemon.
func (d *Daemon) follow(u *unit, sub *logbuf.Subscription, sink schema.LogSink) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer sink.Release()
		defer sub.Close()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-u.done:
				return
			case <-sub.C():
			}
			batch, dropped := sub.Next(followBatchLines, followBatchBytes)
			if dropped > 0 {
				note := logbuf.Line{Time: time.Now(), Stream: logbuf.Daemon, Text: fmt.Sprintf("(%d lines dropped: the reader fell behind)", dropped)}
				batch = append([]logbuf.Line{note}, batch...)
			}
			if len(batch) == 0 {
				continue
			}
			ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
			fut, release := sink.Push(ctx, func(p schema.LogSink_push_Params) error {
				l, err := p.NewLines(int32(len(batch)))
				if err != nil {
					return err
				}
				for i, ln := range batch {
					if err := writeLogLine(l.At(i), ln); err != nil {
						return err
					}
				}
				return nil
			})
			_, err := fut.Struct()
			release()
			cancel()
			if err != nil {
				return
			}
		}
	}()
}

func writeLogLine(s schema.LogLine, l logbuf.Line) error {
	s.SetTimeUnixNano(l.Time.UnixNano())
	if err := s.SetStream(l.Stream); err != nil {
		return err
	}
	return s.SetText(l.Text)
}

// statusInto allocates a control method's results and writes the named
// plugin's status into their `plugin` field.
func statusInto[R interface {
	NewPlugin() (schema.PluginStatus, error)
}](d *Daemon, alloc func() (R, error), name string) error {
	_, err := newStatus(d, alloc, name)
	return err
}

// installedInto is statusInto for an install's answer: it also says what
// data of an earlier install the new one took over.
func installedInto[R interface {
	NewPlugin() (schema.PluginStatus, error)
}](d *Daemon, alloc func() (R, error), rec registry.Record) error {
	st, err := newStatus(d, alloc, rec.Name)
	if err != nil {
		return err
	}
	st.SetKeptDataKeys(uint64(rec.KeptData.Keys))
	st.SetKeptDataSettings(uint32(rec.KeptData.Settings))
	st.SetKeptDataBytes(uint64(rec.KeptData.Bytes))
	return nil
}

func newStatus[R interface {
	NewPlugin() (schema.PluginStatus, error)
}](d *Daemon, alloc func() (R, error), name string) (schema.PluginStatus, error) {
	u, err := d.unit(name)
	if err != nil {
		return schema.PluginStatus{}, err
	}
	r, err := alloc()
	if err != nil {
		return schema.PluginStatus{}, err
	}
	st, err := r.NewPlugin()
	if err != nil {
		return schema.PluginStatus{}, err
	}
	return st, d.writeStatus(st, u)
}

func (d *Daemon) writeStatus(s schema.PluginStatus, u *unit) error {
	rec, us := u.status()
	state, detail, restarts, lastExit := us.state, us.detail, us.restarts, us.lastExit
	pid, started, version := us.pid, us.started, us.version

	m := rec.Manifest
	var e []error
	e = append(e, s.SetName(rec.Name), s.SetVersion(m.Version), s.SetDescription(m.Description))
	s.SetEnabled(rec.Enabled)
	e = append(e, s.SetState(state), s.SetDetail(detail), s.SetLastExit(lastExit))
	s.SetPid(int32(pid))
	s.SetRestarts(uint32(restarts))
	e = append(e, s.SetRuntime(d.cfg.Runtime.Name()))
	s.SetSandboxed(d.cfg.Runtime.Sandboxed())
	s.SetProtocolVersion(version)
	s.SetInstalledAtUnixMs(rec.InstalledAt.UnixMilli())
	if !started.IsZero() {
		s.SetStartedAtUnixMs(started.UnixMilli())
	}
	e = append(e, s.SetDir(rec.Dir), writeProvenance(s, rec))
	if p, err := d.store.Previous(rec.Name); err == nil {
		e = append(e, s.SetPreviousVersion(p.Record.Manifest.Version))
	}
	hl, err := s.NewHooks(int32(len(m.Hooks)))
	e = append(e, err)
	if err == nil {
		now := time.Now()
		for i, h := range m.Hooks {
			hs := hl.At(i)
			e = append(e, hs.SetName(h.Name), hs.SetMethod(h.Method), hs.SetRoute(h.Route))
			hs.SetPhase(phaseOf(h.Phase))
			hs.SetPriority(int32(h.Priority))
			deadline := h.Deadline
			if o, ok := rec.Deadlines[h.Name]; ok {
				deadline = o
				hs.SetDeadlineOverridden(true)
			}
			hs.SetDeadlineMicros(uint64(deadline.Duration / time.Microsecond))
			if h.Failure == manifest.FailClosed {
				hs.SetFailurePolicy(schema.FailurePolicy_failClosed)
			}
			calls, failures, circuit := u.breaker(h.Name).Stats(now)
			hs.SetCalls(calls)
			hs.SetFailures(failures)
			e = append(e, hs.SetCircuit(circuit))
			p50, p99 := u.hookQuantiles(h.Name)
			hs.SetP50Micros(uint64(p50 / time.Microsecond))
			hs.SetP99Micros(uint64(p99 / time.Microsecond))
			causes, counts := u.policy(h.Name).snapshot()
			cl, err := hs.NewByPolicy(int32(len(causes)))
			e = append(e, err)
			for j := range causes {
				if err == nil {
					e = append(e, cl.At(j).SetCause(causes[j]))
					cl.At(j).SetCount(counts[j])
				}
			}
		}
	}
	sl, err := s.NewStreams(int32(len(m.Streams)))
	e = append(e, err)
	if err == nil {
		for i, st := range m.Streams {
			ss := sl.At(i)
			e = append(e, ss.SetName(st.Name), ss.SetKind(st.Kind), ss.SetRole(string(st.Role)))
			ss.SetPriority(int32(st.Priority))
			ss.SetDeadlineMicros(uint64(st.Deadline.Duration / time.Microsecond))
			if st.Failure == manifest.FailClosed {
				ss.SetFailurePolicy(schema.FailurePolicy_failClosed)
			}
			c := u.stageStats(st.Name)
			ss.SetStreams(c.streams.Load())
			ss.SetOpen(uint32(max(c.open.Load(), 0)))
			ss.SetFrames(c.frames.Load())
			ss.SetDropped(c.dropped.Load())
			ss.SetMissedDeadlines(c.missed.Load())
			ss.SetFailures(c.failures.Load())
		}
	}
	g, err := s.NewGrant()
	e = append(e, err)
	if err == nil {
		e = append(e, wire.WritePermissions(g, rec.Grant))
	}
	return errors.Join(e...)
}
