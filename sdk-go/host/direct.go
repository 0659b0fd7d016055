package host

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Direct hook lanes.
//
// A hooked request normally crosses two connections: host → daemon →
// plugin. The session may instead call the plugins itself, over direct
// lanes the daemon set up between them (schema/stream.capnp, LaneGrant):
// one round trip per hook instead of two. It then applies what the daemon
// would — the hooks' order, each hook's deadline, failure policy and
// circuit breaker, the rules of the phase (wire.SortHooks, wire.RunPhase)
// — from the contract the route table carries, for every phase: several
// hooks run one after another, observers are called off the request's
// path. A phase with a plugin the session has no lane to (not granted
// yet, refused, broken) goes through the daemon as before.

// directLane is the session's lane to one plugin, or the memory of having
// asked for one.
type directLane struct {
	lane     *wire.LaneClient // nil while asked for or refused
	refused  string           // why the daemon refused the last request; "" once granted
	breakers map[string]*wire.Breaker
	reported map[string][2]uint64 // calls, failures already told to the daemon
	stats    map[string]*directStats
	askedAt  time.Time
}

// directStats is what the daemon hears of a hook's direct calls besides
// their number and failures: failures by kind, answers by policy while
// the breaker was open, and latency (in wire.LatencyBuckets, as the
// daemon's own histograms). The daemon's metrics and inspect show them.
type directStats struct {
	timeouts, rejected, breakerOpen atomic.Uint64
	latency                         wire.LatencyHistogram
	// What was reported; read and written under the session's lock.
	sentTimeouts, sentRejected, sentBreakerOpen uint64
	sentLatency                                 wire.LatencySnapshot
}

// statsEvery is how often a session tells the daemon what its direct calls
// added up to.
const statsEvery = time.Second

// reportStats sends the daemon the calls and failures made on direct lanes
// since the last report, so that `dimplugctl inspect` counts them.
func (s *Session) reportStats() {
	type delta struct {
		plugin, hook                    string
		calls, failures                 uint64
		timeouts, rejected, breakerOpen uint64
		latency                         wire.LatencySnapshot
	}
	var ds []delta
	s.mu.Lock()
	fc := s.frames
	if fc == nil {
		// No frame socket (the daemon is away): nothing is marked
		// reported, so the next report after it is back carries it.
		s.mu.Unlock()
		return
	}
	for plugin, dl := range s.direct {
		for hook, br := range dl.breakers {
			calls, failures, _ := br.Stats(time.Now())
			was := dl.reported[hook]
			d := delta{plugin: plugin, hook: hook, calls: calls - was[0], failures: failures - was[1]}
			if st := dl.stats[hook]; st != nil {
				t, r, b, l := st.timeouts.Load(), st.rejected.Load(), st.breakerOpen.Load(), st.latency.Snapshot()
				d.timeouts, d.rejected, d.breakerOpen = t-st.sentTimeouts, r-st.sentRejected, b-st.sentBreakerOpen
				d.latency = l.Sub(st.sentLatency)
				st.sentTimeouts, st.sentRejected, st.sentBreakerOpen, st.sentLatency = t, r, b, l
			}
			if d.calls != 0 || d.failures != 0 || d.breakerOpen != 0 || d.latency.Count() != 0 {
				ds = append(ds, d)
				dl.reported[hook] = [2]uint64{calls, failures}
			}
		}
	}
	s.mu.Unlock()
	for _, d := range ds {
		_ = fc.conn.Send(func(m schema.FrameMsg) error {
			hs, err := m.NewHookStats()
			if err != nil {
				return err
			}
			if err := hs.SetPlugin(d.plugin); err != nil {
				return err
			}
			if err := hs.SetHook(d.hook); err != nil {
				return err
			}
			hs.SetCalls(d.calls)
			hs.SetFailures(d.failures)
			hs.SetTimeouts(d.timeouts)
			hs.SetRejected(d.rejected)
			hs.SetBreakerOpen(d.breakerOpen)
			l, err := hs.NewLatencyCounts(int32(len(d.latency.Counts)))
			if err != nil {
				return err
			}
			for i, n := range d.latency.Counts {
				l.Set(i, n)
			}
			hs.SetLatencySumMicros(uint64(d.latency.Sum / time.Microsecond))
			return nil
		})
	}
}

// reportLoop reports direct-call stats every statsEvery until the session
// closes; it is owned by the session.
func (s *Session) reportLoop(stop <-chan struct{}) {
	t := time.NewTicker(statsEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.reportStats()
		}
	}
}

// retryLane is how long a session waits before asking again for a lane the
// daemon refused (the plugin was not running, say).
const retryLane = time.Second

// directHook is one hook of a phase that a session calls over a direct
// lane, with what the call needs.
type directHook struct {
	hook   *RouteHook
	entry  *RouteEntry
	params []manifest.Param
	lane   *wire.LaneClient
	br     *wire.Breaker
	st     *directStats
}

func (h directHook) key() wire.HookKey {
	return wire.HookKey{Priority: h.hook.Priority, Plugin: h.hook.Plugin, Hook: h.hook.Hook}
}

func describeDirect(h directHook) wire.PhaseHook {
	return wire.PhaseHook{Name: h.hook.name(), FailClosed: h.hook.FailClosed}
}

// dispatchDirect runs a phase over direct lanes when the session holds a
// lane to every plugin with a hook in it: the hooks in the daemon's order,
// under the daemon's phase policy (wire.SortHooks, wire.RunPhase), each
// call under its hook's deadline, breaker and failure policy. Observers
// are handed their copies on the session's per-plugin queues. ok is false
// when the phase must go through the daemon: a lane is missing (it is
// asked for meanwhile), or the first hook's plugin went away under the
// call, before any hook of the phase ran. A plugin that goes away later in
// the phase is answered by its hook's policy, as the daemon would.
func (s *Session) dispatchDirect(ctx context.Context, phase Phase, req *Request, resp *Response) (res *Result, ok bool) {
	if s.noDirect {
		return nil, false
	}
	t := s.routes.Load()
	if t == nil {
		return nil, false
	}
	var buf [4]directHook
	var pbuf [8]manifest.Param
	hooks, params := buf[:0], pbuf[:0]
	for i := range t.Entries {
		e := &t.Entries[i]
		if !manifest.MethodMatches(e.Method, req.Method) {
			continue
		}
		var ps []manifest.Param
		matched, tried := false, false
		for j := range e.Hooks {
			if e.Hooks[j].Phase != phase {
				continue
			}
			if !tried {
				n := len(params)
				params, matched = e.route.AppendMatch(params, req.Path)
				ps, tried = params[n:len(params):len(params)], true
			}
			if !matched {
				break
			}
			hooks = append(hooks, directHook{hook: &e.Hooks[j], entry: e, params: ps})
		}
	}
	if len(hooks) == 0 {
		return nil, false
	}
	ready := true
	for i := range hooks { // asks for every missing lane at once
		h := &hooks[i]
		if h.lane, h.br, h.st = s.directLaneFor(h.hook.Plugin, h.hook.Hook, t); h.lane == nil {
			ready = false
		}
	}
	if !ready {
		return nil, false
	}
	if len(hooks) > 1 {
		wire.SortHooks(phase, hooks, func(h directHook) wire.HookKey { return h.key() })
	}
	if phase == PhaseObserve {
		return s.observeDirect(hooks, req, resp), true
	}
	fallback, ran := false, 0
	out := wire.RunPhase(phase, hooks, describeDirect, func(h directHook, req *Request, resp *Response) (wire.HookAnswer, *wire.HookError) {
		if fallback {
			return wire.HookAnswer{}, errFallback // not called: the outcome is dropped
		}
		a, herr, away := s.callDirect(ctx, &h, phase, req, resp)
		if away && ran == 0 {
			fallback = true // nothing ran yet: the daemon knows what to say
		}
		ran++
		return a, herr
	}, req, resp)
	if fallback {
		return nil, false
	}
	return resultOf(&out), true
}

// errFallback ends a phase that is going through the daemon instead.
var errFallback = &HookError{Kind: schema.HookErrorKind_unavailable, Message: "sent through the daemon"}

// callDirect makes one hook call over h's lane. away reports that the
// plugin went away under the call or the host gave up (herr is then
// unavailable, and the breaker does not count it).
func (s *Session) callDirect(ctx context.Context, h *directHook, phase Phase, req *Request, resp *Response) (a wire.HookAnswer, herr *HookError, away bool) {
	if allowed, why := h.br.Allow(time.Now()); !allowed {
		h.st.breakerOpen.Add(1)
		return a, &HookError{Plugin: h.hook.Plugin, Hook: h.hook.Hook, Kind: schema.HookErrorKind_unavailable,
			Message: why + " on " + req.Method + " " + h.entry.Route}, false
	}
	began := time.Now()
	a, herr = wire.CallHook(ctx, h.lane, &wire.HookCall{Hook: h.hook.Hook, Phase: phase, Timeout: h.hook.Deadline,
		Request: wire.HookRequest(req, h.entry.Route, h.params), Response: resp}, h.hook.Plugin)
	if herr == nil {
		h.st.latency.Observe(time.Since(began))
		h.br.Record(true, time.Now())
		return a, nil, false
	}
	select {
	case <-h.lane.Done():
		// The lane closed (the instance went away) or broke (the plugin
		// sent a frame that is not one): the next call asks for a new
		// lane, going through the daemon meanwhile.
		s.dropLane(h.hook.Plugin, h.lane)
	default:
	}
	if herr.Kind == schema.HookErrorKind_unavailable {
		// The plugin went away, or the host gave up: not the hook's fault.
		h.br.Release()
		return a, herr, true
	}
	h.st.latency.Observe(time.Since(began)) // the calls the breaker counts
	switch herr.Kind {
	case schema.HookErrorKind_timeout:
		h.st.timeouts.Add(1)
	case schema.HookErrorKind_rejected:
		h.st.rejected.Add(1)
	}
	h.br.Record(false, time.Now())
	return a, herr, false
}

// Direct observers: each plugin's observe calls run one at a time, in the
// order they were dispatched, on a queue of the session's (as the
// daemon's per-plugin queues do), within these bounds.
const (
	// maxObserveBytes bounds what the observe calls queued or in flight
	// in a session hold (bodies and headers).
	maxObserveBytes = 64 << 20
	// closeObservers is how long Close lets queued observations finish
	// before it ends the lanes under them.
	closeObservers = 5 * time.Second
)

// observeDirect hands each observer its copy of the exchange on the
// plugin's queue and returns at once; an observer whose queue is full, or
// that would pass maxObserveBytes, is skipped (listed in Skipped).
func (s *Session) observeDirect(hooks []directHook, req *Request, resp *Response) *Result {
	res := &Result{Kind: Continue}
	// The host may reuse what it passed once Dispatch returns.
	req = req.Clone()
	if resp != nil {
		resp = resp.Clone()
	}
	size := wire.ExchangeSize(req, resp)
	for _, h := range hooks {
		skip := func(why string) {
			res.Skipped = append(res.Skipped, HookError{Plugin: h.hook.Plugin, Hook: h.hook.Hook,
				Kind: schema.HookErrorKind_unavailable, Message: "observer dropped: " + why})
		}
		if s.observeBytes.Add(size) > maxObserveBytes {
			s.observeBytes.Add(-size)
			skip(fmt.Sprintf("the observe calls waiting in the host hold more than %d MiB", maxObserveBytes>>20))
			continue
		}
		q, barrier := s.observeQueue(h.hook.Plugin)
		s.observePending.Add(1)
		if !q.Push(&s.observing, func() {
			defer s.observePending.Add(-1)
			defer s.observeBytes.Add(-size)
			if barrier {
				s.awaitDaemonObservers(h.hook.Plugin)
			}
			// A failure counts in the hook's breaker and stats, which
			// the daemon hears of (reportStats).
			_, _, _ = s.callDirect(s.stopCtx, &h, PhaseObserve, req, resp)
		}) {
			s.observePending.Add(-1)
			s.observeBytes.Add(-size)
			skip(fmt.Sprintf("%d observe calls already wait for this plugin", wire.MaxQueuedCalls))
		}
	}
	return res
}

// observeQueue returns the session's observe queue for plugin, and
// whether the plugin has been sent observations through the daemon since
// its last direct one (the next direct call must wait for those first).
func (s *Session) observeQueue(plugin string) (q *wire.CallQueue, viaDaemon bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q = s.observeQ[plugin]
	if q == nil {
		q = &wire.CallQueue{}
		s.observeQ[plugin] = q
	}
	viaDaemon = s.observedViaDaemon[plugin]
	delete(s.observedViaDaemon, plugin)
	return q, viaDaemon
}

// Observations keep their order per plugin across the switch between the
// daemon's path and direct lanes (either way, for instance when a lane is
// granted, or when another observer's lane breaks and the whole phase goes
// through the daemon for a while):
//
//   - before a phase of observers goes through the daemon, the session
//     lets its direct observe calls finish (beforeDaemonObserve), and
//     notes the plugins it sent through the daemon;
//   - before the first direct call to such a plugin, its queue waits for
//     the daemon's to pass that point (awaitDaemonObservers, the host
//     face's observed barrier).
//
// Both waits are off the request's path: observe dispatches come from
// the middleware's own queue.

// beforeDaemonObserve is called before observers are dispatched through
// the daemon.
func (s *Session) beforeDaemonObserve(req *Request) {
	if s.observePending.Load() > 0 {
		s.awaitObservers()
	}
	t := s.routes.Load()
	if t == nil {
		return
	}
	hooks := t.hooks(PhaseObserve, req.Method, req.Path)
	if len(hooks) == 0 {
		return
	}
	s.mu.Lock()
	for _, h := range hooks {
		s.observedViaDaemon[h.Plugin] = true
	}
	s.mu.Unlock()
}

// awaitDaemonObservers waits until the observe calls the daemon holds for
// plugin have been made (a few seconds at most).
func (s *Session) awaitDaemonObservers(plugin string) {
	l := s.link.Load()
	if l == nil {
		return // the daemon is away: what it held is gone
	}
	ctx, cancel := context.WithTimeout(s.stopCtx, closeObservers)
	defer cancel()
	fut, release := l.s.Observed(ctx, func(p schema.HostSession_observed_Params) error { return p.SetPlugin(plugin) })
	defer release()
	_, _ = fut.Struct() // an old daemon, or a timeout: go on
}

// resultOf is a Result for what a phase's hooks came to.
func resultOf(o *wire.Outcome) *Result {
	res := &Result{Kind: Continue, RequestMutation: o.RequestMutation, Response: o.Response,
		ResponseMutation: o.ResponseMutation, Failure: o.Failure, Skipped: o.Skipped, Applied: o.Applied}
	switch o.Kind {
	case schema.DispatchResult_outcome_Which_mutateRequest:
		res.Kind = MutateRequest
	case schema.DispatchResult_outcome_Which_respond:
		res.Kind = Respond
	case schema.DispatchResult_outcome_Which_mutateResponse:
		res.Kind = MutateResponse
	case schema.DispatchResult_outcome_Which_failClosed:
		res.Kind = FailClosed
	}
	return res
}

// directLaneFor returns the session's lane to plugin and the hook's
// breaker and stats, asking the daemon for a lane (in the background) when
// there is none yet.
func (s *Session) directLaneFor(plugin, hook string, t *RouteTable) (*wire.LaneClient, *wire.Breaker, *directStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dl := s.direct[plugin]
	if dl == nil {
		dl = &directLane{breakers: map[string]*wire.Breaker{}, reported: map[string][2]uint64{}, stats: map[string]*directStats{}}
		s.direct[plugin] = dl
	}
	if dl.lane == nil {
		if time.Since(dl.askedAt) > retryLane {
			dl.askedAt = time.Now()
			go s.askLane(plugin) // owned by the session; ends after one send
		}
		return nil, nil, nil
	}
	br := dl.breakers[hook]
	if br == nil {
		failures, cooldown := t.BreakerFailures, t.BreakerCooldown
		if failures <= 0 || cooldown <= 0 {
			failures, cooldown = 5, time.Second
		}
		br = wire.NewBreaker(failures, cooldown)
		dl.breakers[hook] = br
	}
	st := dl.stats[hook]
	if st == nil {
		st = &directStats{}
		dl.stats[hook] = st
	}
	return dl.lane, br, st
}

func (s *Session) askLane(plugin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fc, err := s.frameClient(ctx)
	if err != nil {
		return
	}
	s.statsOnce.Do(func() {
		s.statsStop = make(chan struct{})
		s.statsDone = make(chan struct{})
		go func() { defer close(s.statsDone); s.reportLoop(s.statsStop) }()
	})
	_ = fc.conn.Send(func(m schema.FrameMsg) error { return m.SetLaneRequest(plugin) })
}

// laneGranted takes a lane the daemon set up (or its refusal).
func (s *Session) laneGranted(plugin, why string, f *os.File) {
	if f == nil { // refused; asked again after retryLane
		if why == "" {
			why = "refused without a reason"
		}
		s.mu.Lock()
		if dl := s.direct[plugin]; dl != nil {
			dl.refused = termesc.String(why)
		}
		s.mu.Unlock()
		return
	}
	c, err := net.FileConn(f)
	if err != nil {
		return
	}
	l := wire.NewLaneClient(c)
	s.mu.Lock()
	dl := s.direct[plugin]
	if dl == nil || s.closed {
		s.mu.Unlock()
		l.Close()
		return
	}
	old := dl.lane
	dl.lane, dl.refused = l, ""
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// DirectLane reports whether the session holds a direct hook lane to
// plugin and, when it does not, why the daemon refused the last request
// for one ("" when the session has not asked, or is waiting for the
// answer). Calls to a plugin without a lane go through the daemon, which
// is correct but slower: this says why.
func (s *Session) DirectLane(plugin string) (granted bool, refused string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dl := s.direct[plugin]
	if dl == nil {
		return false, ""
	}
	return dl.lane != nil, dl.refused
}

// dropLane forgets a lane that broke, so that the next request asks again.
func (s *Session) dropLane(plugin string, l *wire.LaneClient) {
	s.mu.Lock()
	if dl := s.direct[plugin]; dl != nil && dl.lane == l {
		dl.lane = nil
		dl.askedAt = time.Time{}
	}
	s.mu.Unlock()
	l.Close()
}

// awaitObservers lets the observations already queued finish, for
// closeObservers at most.
func (s *Session) awaitObservers() {
	done := make(chan struct{})
	go func() { s.observing.Wait(); close(done) }() // ends with the last observe call
	select {
	case <-done:
	case <-time.After(closeObservers):
	}
}

// closeLanes reports the last stats and ends every direct lane.
func (s *Session) closeLanes() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.statsOnce.Do(func() {}) // no reporter can start after this
	if s.statsStop != nil {
		close(s.statsStop)
		<-s.statsDone
		s.reportStats()
	}
	s.mu.Lock()
	var ls []*wire.LaneClient
	for _, dl := range s.direct {
		if dl.lane != nil {
			ls = append(ls, dl.lane)
			dl.lane = nil
		}
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}
