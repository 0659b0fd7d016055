package daemon

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// outcome is the combined effect of one phase's hooks on one request.
type outcome struct {
	which   schema.DispatchResult_outcome_Which
	reqMut  wire.RequestMutation
	resp    *wire.Response
	respMut wire.ResponseMutation
	fail    *wire.HookError
	skipped []wire.HookError
	applied []string
}

// Observers are best effort: past these bounds a copy is dropped (and
// reported in the dispatch's skipped list) rather than queued without
// limit. A burst from one host fits; a plugin that observes more slowly
// than requests arrive for long loses copies, and only its own.
const (
	// maxObserveQueue bounds one plugin's observe calls queued or in
	// flight.
	maxObserveQueue = 4096
	// maxObserveBytes bounds the bytes (bodies plus headers) of every
	// observe call queued or in flight in the daemon.
	maxObserveBytes = 64 << 20
)

// observeBytes is what the observe calls queued or in flight hold.
var observeBytes atomic.Int64

// observeSize is what an observe call holds on to, roughly.
func observeSize(req *wire.Request, resp *wire.Response) int64 {
	n := int64(len(req.Body) + len(req.Path) + len(req.RawQuery) + 512)
	for k, vs := range req.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v))
		}
	}
	if resp != nil {
		n += int64(len(resp.Body))
		for k, vs := range resp.Header {
			for _, v := range vs {
				n += int64(len(k) + len(v))
			}
		}
	}
	return n
}

// dispatch runs every hook of phase matching req, in order. A call that
// arrives while the daemon drains (see drain) is refused with
// wire.ErrStopping before any hook runs, so the host can send it again to
// the next daemon.
func (d *Daemon) dispatch(ctx context.Context, phase schema.Phase, req *wire.Request, resp *wire.Response) (*outcome, error) {
	d.calls.Add(1) // a graceful stop waits for it (see drain)
	defer d.calls.Add(-1)
	if d.draining.Load() {
		return nil, wire.ErrStopping
	}
	out := &outcome{which: schema.DispatchResult_outcome_Which_continue}
	t := d.routes.cur.Load()
	if int(phase) >= len(t.phases) {
		return out, nil
	}
	hooks := t.phases[phase]
	switch phase {
	case schema.Phase_request:
		d.dispatchRequest(ctx, hooks, req, out)
	case schema.Phase_response:
		d.dispatchResponse(ctx, hooks, req, resp, out)
	case schema.Phase_route:
		d.dispatchRoute(ctx, hooks, req, out)
	case schema.Phase_observe:
		d.dispatchObserve(hooks, req, resp, out)
	}
	return out, nil
}

// dispatchRequest runs the request hooks in turn, each on the request as
// the ones before left it; a hook that answers ends the phase.
func (d *Daemon) dispatchRequest(ctx context.Context, hooks []*hookRef, req *wire.Request, out *outcome) {
	var work *wire.Request
	for h, params := range matching(hooks, req) {
		if work == nil {
			work = req.Clone()
		}
		a, herr := d.callHook(ctx, h, schema.Phase_request, work, params, nil)
		if herr != nil {
			if out.failed(h, herr) {
				return
			}
			continue
		}
		switch a.Kind {
		case schema.HookResult_Which_mutateRequest:
			a.RequestMutation.Apply(work)
			out.applied = append(out.applied, h.name())
		case schema.HookResult_Which_respond:
			out.which, out.resp = schema.DispatchResult_outcome_Which_respond, a.Response
			out.applied = append(out.applied, h.name())
			return
		}
	}
	if work != nil {
		if m := wire.DiffRequest(req, work); !m.IsZero() {
			out.which, out.reqMut = schema.DispatchResult_outcome_Which_mutateRequest, m
		}
	}
}

// dispatchResponse runs the response hooks in turn, each on the response
// as the ones before left it.
func (d *Daemon) dispatchResponse(ctx context.Context, hooks []*hookRef, req *wire.Request, resp *wire.Response, out *outcome) {
	var work *wire.Response
	for h, params := range matching(hooks, req) {
		if work == nil {
			work = resp.Clone()
		}
		a, herr := d.callHook(ctx, h, schema.Phase_response, req, params, work)
		if herr != nil {
			if out.failed(h, herr) {
				return
			}
			continue
		}
		if a.Kind == schema.HookResult_Which_mutateResponse {
			a.ResponseMutation.Apply(work)
			out.applied = append(out.applied, h.name())
		}
	}
	if work != nil {
		if m := wire.DiffResponse(resp, work); !m.IsZero() {
			out.which, out.respMut = schema.DispatchResult_outcome_Which_mutateResponse, m
		}
	}
}

// dispatchRoute asks the first matching route hook, the route's owner, to
// answer the request.
func (d *Daemon) dispatchRoute(ctx context.Context, hooks []*hookRef, req *wire.Request, out *outcome) {
	for h, params := range matching(hooks, req) {
		a, herr := d.callHook(ctx, h, schema.Phase_route, req, params, nil)
		if herr != nil {
			// The owner of a route is the only one who can answer it:
			// whatever its policy, a failure fails the request.
			out.which, out.fail = schema.DispatchResult_outcome_Which_failClosed, herr
			return
		}
		out.which, out.resp = schema.DispatchResult_outcome_Which_respond, a.Response
		out.applied = append(out.applied, h.name())
		return
	}
}

// dispatchObserve hands the observers their copies in the background and
// returns at once; what they answer is ignored.
//
// Ordering: each plugin gets its observations one at a time, in the order
// the daemon dispatched them (its queue, callQueue), so observations a
// host sends in order (one Dispatch after another returned, as the host
// SDK's Middleware does) reach each plugin in that order, and a plugin
// never handles two observations at once. A slow observer only delays its
// own queue (up to its deadline per call).
func (d *Daemon) dispatchObserve(hooks []*hookRef, req *wire.Request, resp *wire.Response, out *outcome) {
	size := observeSize(req, resp)
	for h, params := range matching(hooks, req) {
		if observeBytes.Add(size) > maxObserveBytes {
			observeBytes.Add(-size)
			out.skipped = append(out.skipped, *hookErr(h, schema.HookErrorKind_unavailable,
				fmt.Sprintf("observer dropped: the observe calls waiting in the daemon hold more than %d MiB", maxObserveBytes>>20)))
			continue
		}
		ok := h.unit.observeQ.push(d, func() {
			defer observeBytes.Add(-size)
			if _, herr := d.callHook(d.ctx, h, schema.Phase_observe, req, params, resp); herr != nil {
				h.unit.logf("observe hook %q failed: %s", h.hook.Name, herr.Message)
			}
		})
		if !ok {
			observeBytes.Add(-size)
			out.skipped = append(out.skipped, *hookErr(h, schema.HookErrorKind_unavailable,
				fmt.Sprintf("observer dropped: %d observe calls already wait for this plugin", maxObserveQueue)))
		}
	}
}

// callQueue holds calls to a plugin that must be made one after another
// in the order they were queued (its observe calls, its settings change
// notifications), by a goroutine the daemon owns that runs while the
// queue is not empty; at most maxObserveQueue wait.
type callQueue struct {
	mu      sync.Mutex
	calls   []func()
	running bool
}

// push queues call, or reports false if maxObserveQueue calls wait.
func (q *callQueue) push(d *Daemon, call func()) bool {
	q.mu.Lock()
	if len(q.calls) >= maxObserveQueue {
		q.mu.Unlock()
		return false
	}
	q.calls = append(q.calls, call)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if !start {
		return true
	}
	d.wg.Add(1)
	go func() { // owned by the daemon; each call ends at its hook's deadline at the latest
		defer d.wg.Done()
		for {
			q.mu.Lock()
			if len(q.calls) == 0 {
				q.running = false
				q.mu.Unlock()
				return
			}
			call := q.calls[0]
			q.calls[0] = nil
			q.calls = q.calls[1:]
			q.mu.Unlock()
			call()
		}
	}()
	return true
}

// matching yields the hooks that match req, in order, with the route
// parameters each one's route takes from the path.
func matching(hooks []*hookRef, req *wire.Request) iter.Seq2[*hookRef, []manifest.Param] {
	return func(yield func(*hookRef, []manifest.Param) bool) {
		for _, h := range hooks {
			if params, ok := h.matches(req.Method, req.Path); ok && !yield(h, params) {
				return
			}
		}
	}
}

// failed records a hook failure and reports whether it ends the request
// (fail-closed).
func (o *outcome) failed(h *hookRef, e *wire.HookError) bool {
	if h.hook.Failure == manifest.FailClosed {
		o.which, o.fail = schema.DispatchResult_outcome_Which_failClosed, e
		return true
	}
	o.skipped = append(o.skipped, *e)
	return false
}

// name is "plugin/hook", as a dispatch result lists the hooks it applied.
func (h *hookRef) name() string { return h.plugin + "/" + h.hook.Name }

func hookErr(h *hookRef, kind schema.HookErrorKind, msg string) *wire.HookError {
	return &wire.HookError{Plugin: h.plugin, Hook: h.hook.Name, Kind: kind, Message: msg}
}

// policyCause is the cause under which a failed call is counted.
func policyCause(ctx context.Context, herr *wire.HookError) string {
	switch herr.Kind {
	case schema.HookErrorKind_timeout:
		return causeDeadline
	case schema.HookErrorKind_rejected:
		return causeRejected
	case schema.HookErrorKind_unavailable:
		if ctx.Err() != nil {
			return causeCancelled
		}
		return causeCrashed
	}
	return causeFailed
}

// callHook calls one plugin hook under its deadline.
func (d *Daemon) callHook(ctx context.Context, h *hookRef, phase schema.Phase, req *wire.Request, params []manifest.Param, resp *wire.Response) (wire.HookAnswer, *wire.HookError) {
	where := fmt.Sprintf("on %s %s", req.Method, h.hook.Route)
	counts := h.unit.policy(h.hook.Name)
	if ok, why := h.breaker.Allow(time.Now()); !ok {
		counts.add(causeBreaker)
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, why+" "+where)
	}
	client, err := h.unit.client()
	if err != nil {
		h.breaker.Release()
		cause := causeNotRunning
		var nr *notRunning
		if errors.As(err, &nr) {
			cause = nr.cause
		}
		counts.add(cause)
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, err.Error()+" "+where)
	}
	defer client.release()
	began := time.Now()
	a, herr := d.call(ctx, client, h, phase, req, params, resp, where)
	if herr != nil {
		counts.add(policyCause(ctx, herr))
	}
	if herr == nil || herr.Kind != schema.HookErrorKind_unavailable {
		// The calls the breaker counts below (metrics.go).
		h.unit.latency(h.hook.Name).daemon.Observe(time.Since(began))
	}
	// The host giving up and the plugin going away say nothing about the
	// hook's health.
	if herr != nil && herr.Kind == schema.HookErrorKind_unavailable {
		h.breaker.Release()
	} else {
		h.breaker.Record(herr == nil, time.Now())
	}
	return a, herr
}

func (d *Daemon) call(ctx context.Context, ref pluginRef, h *hookRef, phase schema.Phase, req *wire.Request, params []manifest.Param, resp *wire.Response, where string) (wire.HookAnswer, *wire.HookError) {
	c := &wire.HookCall{Hook: h.hook.Name, Phase: phase, Timeout: h.hook.Deadline.Duration,
		Request: wire.HookRequest(req, h.hook.Route, params), Response: resp}
	if ref.lane != nil {
		return wire.CallHook(ctx, ref.lane, c, h.plugin, where)
	}
	// Plugins without the lane: Cap'n Proto RPC.
	cctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	start := time.Now()
	fut, release := ref.plugin.Hook(cctx, func(p schema.Plugin_hook_Params) error {
		hc, err := p.NewCall()
		if err != nil {
			return err
		}
		return wire.WriteHookCall(hc, c)
	})
	defer release()
	res, err := fut.Struct()
	var result schema.HookResult
	if err == nil {
		result, err = res.Result()
	} else if isDisconnected(err) && !errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, "stopped while handling the request "+where)
	}
	if err != nil {
		return wire.HookAnswer{}, wire.CallError(ctx, cctx, start, c.Timeout, err, h.plugin, h.hook.Name, where)
	}
	a, err := wire.ReadHookResult(phase, result)
	if err != nil {
		return wire.HookAnswer{}, wire.AnswerError(h.plugin, h.hook.Name, where, err)
	}
	return a, nil
}

func isDisconnected(err error) bool {
	return exc.IsType(err, exc.Disconnected)
}
