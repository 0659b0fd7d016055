package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// hookRef is one active hook of one plugin.
type hookRef struct {
	unit    *unit
	plugin  string
	hook    manifest.Hook // Deadline is the one in force (override or manifest)
	route   manifest.Route
	phase   schema.Phase
	breaker *wire.Breaker
}

func (h *hookRef) matches(method, path string) ([]manifest.Param, bool) {
	if h.hook.Method != "*" && h.hook.Method != method {
		return nil, false
	}
	return h.route.Match(path)
}

// table is an immutable snapshot of the active hooks. Dispatch reads the
// current one without locks.
type table struct {
	version uint64
	phases  [4][]*hookRef // by schema.Phase, in call order
	entries []routeEntry
}

type routeEntry struct {
	method, route string
	phases        []schema.Phase
	owner         string
	hooks         []*hookRef
}

// routes holds the current table and the hosts watching it.
type routes struct {
	cur atomic.Pointer[table]

	mu       sync.Mutex
	version  uint64
	watchers map[*watcher]struct{}
}

func (r *routes) init() {
	r.cur.Store(&table{})
	r.watchers = map[*watcher]struct{}{}
}

// rebuildRoutes recomputes the table from the installed, enabled plugins and
// tells every watcher.
func (d *Daemon) rebuildRoutes() {
	var hooks []*hookRef
	for _, u := range d.sortedUnits() {
		u.mu.Lock()
		active := u.rec.Enabled && !u.removed
		m := u.rec.Manifest
		overrides := u.rec.Deadlines
		u.mu.Unlock()
		if !active {
			continue
		}
		for _, h := range m.Hooks {
			rt, err := manifest.ParseRoute(h.Route)
			if err != nil { // validated at install; never expected
				d.log.Error("skipping hook with invalid route", "plugin", u.name, "hook", h.Name, "err", err)
				continue
			}
			if d, ok := overrides[h.Name]; ok {
				h.Deadline = d
			}
			hooks = append(hooks, &hookRef{unit: u, plugin: u.name, hook: h, route: rt, phase: phaseOf(h.Phase), breaker: u.breaker(h.Name)})
		}
	}
	t := &table{}
	for _, h := range hooks {
		t.phases[h.phase] = append(t.phases[h.phase], h)
	}
	for p := range t.phases {
		hs := t.phases[p]
		wire.SortHooks(schema.Phase(p), hs, func(h *hookRef) wire.HookKey {
			return wire.HookKey{Priority: h.hook.Priority, Plugin: h.plugin, Hook: h.hook.Name}
		})
	}
	idx := map[[2]string]int{}
	for _, h := range hooks {
		k := [2]string{h.hook.Method, h.hook.Route}
		i, ok := idx[k]
		if !ok {
			i = len(t.entries)
			idx[k] = i
			t.entries = append(t.entries, routeEntry{method: h.hook.Method, route: h.hook.Route})
		}
		e := &t.entries[i]
		e.hooks = append(e.hooks, h)
		if !containsPhase(e.phases, h.phase) {
			e.phases = append(e.phases, h.phase)
		}
		if h.phase == schema.Phase_route {
			e.owner = h.plugin
		}
	}

	d.routes.mu.Lock()
	d.routes.version++
	t.version = d.routes.version
	d.routes.cur.Store(t)
	for w := range d.routes.watchers {
		w.notify()
	}
	d.routes.mu.Unlock()
}

func containsPhase(ps []schema.Phase, p schema.Phase) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func writeTable(s schema.RouteTable, t *table, sup Supervision) error {
	s.SetVersion(t.version)
	s.SetBreakerFailures(uint32(sup.BreakerFailures))
	s.SetBreakerCooldownMicros(uint64(sup.BreakerCooldown / time.Microsecond))
	l, err := s.NewEntries(int32(len(t.entries)))
	if err != nil {
		return err
	}
	for i, e := range t.entries {
		ent := l.At(i)
		if err := ent.SetMethod(e.method); err != nil {
			return err
		}
		if err := ent.SetRoute(e.route); err != nil {
			return err
		}
		if err := ent.SetOwner(e.owner); err != nil {
			return err
		}
		pl, err := ent.NewPhases(int32(len(e.phases)))
		if err != nil {
			return err
		}
		for j, p := range e.phases {
			pl.Set(j, p)
		}
		hl, err := ent.NewHooks(int32(len(e.hooks)))
		if err != nil {
			return err
		}
		for j, h := range e.hooks {
			rh := hl.At(j)
			if err := rh.SetPlugin(h.plugin); err != nil {
				return err
			}
			if err := rh.SetHook(h.hook.Name); err != nil {
				return err
			}
			rh.SetPhase(h.phase)
			rh.SetPriority(int32(h.hook.Priority))
			rh.SetDeadlineMicros(uint64(h.hook.Deadline.Duration / time.Microsecond))
			if h.hook.Failure == manifest.FailClosed {
				rh.SetFailurePolicy(schema.FailurePolicy_failClosed)
			}
		}
	}
	return nil
}

// watcher pushes route table versions to one host. Its goroutine is owned by
// the routes registry and ends when a push fails, the host session ends or
// the daemon closes.
type watcher struct {
	c       schema.RouteWatcher
	pending chan struct{} // capacity 1: a newer table exists
	quit    chan struct{}
	once    sync.Once
}

func (w *watcher) notify() {
	select {
	case w.pending <- struct{}{}:
	default:
	}
}

func (w *watcher) stop() { w.once.Do(func() { close(w.quit) }) }

func (d *Daemon) addWatcher(c schema.RouteWatcher, sent uint64) *watcher {
	w := &watcher{c: c, pending: make(chan struct{}, 1), quit: make(chan struct{})}
	d.routes.mu.Lock()
	d.routes.watchers[w] = struct{}{}
	if d.routes.cur.Load().version != sent {
		w.notify()
	}
	d.routes.mu.Unlock()
	d.wg.Add(1)
	go func() { // the watcher's pusher; ends with the session (w.quit) or the daemon
		defer d.wg.Done()
		backoff := watcherBackoffFirst
		defer func() {
			d.routes.mu.Lock()
			delete(d.routes.watchers, w)
			d.routes.mu.Unlock()
			w.c.Release()
		}()
		for {
			select {
			case <-w.quit:
				return
			case <-d.ctx.Done():
				return
			case <-w.pending:
			}
			t := d.routes.cur.Load()
			if t.version == sent {
				continue
			}
			ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
			fut, release := w.c.Update(ctx, func(p schema.RouteWatcher_update_Params) error {
				tb, err := p.NewTable()
				if err != nil {
					return err
				}
				return writeTable(tb, t, d.sup)
			})
			_, err := fut.Struct()
			release()
			cancel()
			if err != nil {
				// A host that failed or was slow to take one table must
				// not keep a stale one for the rest of its session: try
				// again (with the newest table) until the session ends.
				d.log.Warn("route table push to a host failed; trying again", "version", t.version, "in", backoff, "err", err)
				select {
				case <-w.quit:
					return
				case <-d.ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, watcherBackoffMax)
				w.notify()
				continue
			}
			sent, backoff = t.version, watcherBackoffFirst
		}
	}()
	return w
}

// How long a route watcher waits before pushing again after a failed push.
const (
	watcherBackoffFirst = 500 * time.Millisecond
	watcherBackoffMax   = 30 * time.Second
)

func (r *routes) closeWatchers() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for w := range r.watchers {
		w.stop()
	}
}
