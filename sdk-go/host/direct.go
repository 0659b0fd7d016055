package host

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Direct hook lanes.
//
// A hooked request normally crosses two connections: host → daemon →
// plugin. When a phase of a request has exactly one hook, the session may
// call that plugin itself over a direct lane the daemon set up between the
// two (schema/stream.capnp, LaneGrant): one round trip instead of two. The
// session then applies what the daemon would — the hook's deadline, its
// failure policy, a circuit breaker, the rules of the phase — from the
// contract the route table carries. Everything else (several hooks in a
// phase, observers, a plugin without a lane, a lane that broke) goes
// through the daemon as before.

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

// dispatchDirect tries to run a phase's only hook over a direct lane. ok is false
// when the request must go through the daemon.
func (s *Session) dispatchDirect(ctx context.Context, phase Phase, req *Request, resp *Response) (res *Result, ok bool) {
	if s.noDirect || phase == PhaseObserve {
		return nil, false
	}
	t := s.routes.Load()
	if t == nil {
		return nil, false
	}
	var hook *RouteHook
	var entry *RouteEntry
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.Method != "*" && e.Method != req.Method {
			continue
		}
		for j := range e.Hooks {
			if e.Hooks[j].Phase != phase {
				continue
			}
			if _, match := e.route.Match(req.Path); !match {
				break
			}
			if hook != nil {
				return nil, false // several hooks: the daemon orders them
			}
			hook, entry = &e.Hooks[j], e
		}
	}
	if hook == nil {
		return nil, false
	}
	lane, br, st := s.directLaneFor(hook.Plugin, hook.Hook, t)
	if lane == nil {
		return nil, false
	}
	params, _ := entry.route.Match(req.Path)
	where := fmt.Sprintf("on %s %s", req.Method, entry.Route)
	if allowed, why := br.Allow(time.Now()); !allowed {
		st.breakerOpen.Add(1)
		return fail(hook, phase, &HookError{Plugin: hook.Plugin, Hook: hook.Hook, Kind: schema.HookErrorKind_unavailable, Message: why + " " + where}), true
	}
	began := time.Now()
	a, herr := wire.CallHook(ctx, lane, &wire.HookCall{Hook: hook.Hook, Phase: phase, Timeout: hook.Deadline,
		Request: wire.HookRequest(req, entry.Route, params), Response: resp}, hook.Plugin, where)
	if herr == nil || herr.Kind != schema.HookErrorKind_unavailable {
		st.latency.Observe(time.Since(began)) // the calls the breaker counts below
	}
	if herr != nil {
		select {
		case <-lane.Done():
			// The lane closed (the instance went away) or broke (the
			// plugin sent a frame that is not one): the next call asks
			// for a new lane, going through the daemon meanwhile.
			s.dropLane(hook.Plugin, lane)
		default:
		}
		if herr.Kind == schema.HookErrorKind_unavailable {
			// The plugin went away, or the host gave up: the daemon
			// knows what to say.
			br.Release()
			return nil, false
		}
		switch herr.Kind {
		case schema.HookErrorKind_timeout:
			st.timeouts.Add(1)
		case schema.HookErrorKind_rejected:
			st.rejected.Add(1)
		}
		br.Record(false, time.Now())
		return fail(hook, phase, herr), true
	}
	br.Record(true, time.Now())
	return resultOf(hook, a), true
}

// resultOf is what the daemon would have answered for a phase whose only
// hook answered a.
func resultOf(hook *RouteHook, a wire.HookAnswer) *Result {
	res := &Result{Kind: Continue}
	switch a.Kind {
	case schema.HookResult_Which_mutateRequest:
		res.Kind, res.RequestMutation = MutateRequest, a.RequestMutation
	case schema.HookResult_Which_respond:
		res.Kind, res.Response = Respond, a.Response
	case schema.HookResult_Which_mutateResponse:
		res.Kind, res.ResponseMutation = MutateResponse, a.ResponseMutation
	}
	if res.Kind != Continue {
		res.Applied = []string{hook.Plugin + "/" + hook.Hook}
	}
	return res
}

// fail applies a hook's failure policy: route hooks and fail-closed hooks
// fail the request, fail-open hooks are skipped.
func fail(h *RouteHook, phase Phase, e *HookError) *Result {
	if h.FailClosed || phase == PhaseRoute {
		return &Result{Kind: FailClosed, Failure: e}
	}
	return &Result{Kind: Continue, Skipped: []HookError{*e}}
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
