package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// outcome is the combined effect of one phase's hooks on one request.
type outcome = wire.Outcome

// Observers are best effort: past these bounds a copy is dropped (and
// reported in the dispatch's skipped list) rather than queued without
// limit. A burst from one host fits; a plugin that observes more slowly
// than requests arrive for long loses copies, and only its own.
const (
	// maxObserveQueue bounds one plugin's observe calls queued behind
	// the one in flight.
	maxObserveQueue = wire.MaxQueuedCalls
	// maxObserveBytes bounds the bytes (bodies plus headers) of every
	// observe call queued or in flight in the daemon.
	maxObserveBytes = 64 << 20
)

// observeBytes is what the observe calls queued or in flight hold.
var observeBytes atomic.Int64

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
	t := d.routes.cur.Load()
	if int(phase) >= len(t.phases) {
		return &outcome{Kind: schema.DispatchResult_outcome_Which_continue}, nil
	}
	hooks := t.phases[phase]
	if phase == schema.Phase_observe {
		out := &outcome{Kind: schema.DispatchResult_outcome_Which_continue}
		d.dispatchObserve(hooks, req, resp, out)
		return out, nil
	}
	var buf [8]matched
	out := wire.RunPhase(phase, matching(buf[:0], hooks, req), describeHook,
		func(m matched, req *wire.Request, resp *wire.Response) (wire.HookAnswer, *wire.HookError) {
			return d.callHook(ctx, m.h, phase, req, m.params, resp)
		}, req, resp)
	return &out, nil
}

// matched is a hook whose route matches a request, with the parameters
// its route takes from the path.
type matched struct {
	h      *hookRef
	params []manifest.Param
}

func describeHook(m matched) wire.PhaseHook {
	return wire.PhaseHook{Name: m.h.name(), FailClosed: m.h.hook.Failure == manifest.FailClosed}
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
	size := wire.ExchangeSize(req, resp)
	var buf [8]matched
	for _, m := range matching(buf[:0], hooks, req) {
		h, params := m.h, m.params
		if observeBytes.Add(size) > maxObserveBytes {
			observeBytes.Add(-size)
			out.Skipped = append(out.Skipped, *hookErr(h, schema.HookErrorKind_unavailable,
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
			out.Skipped = append(out.Skipped, *hookErr(h, schema.HookErrorKind_unavailable,
				fmt.Sprintf("observer dropped: %d observe calls already wait for this plugin", maxObserveQueue)))
		}
	}
}

// callQueue holds calls to a plugin that must be made one after another
// in the order they were queued (its observe calls, its settings change
// notifications), by a goroutine the daemon owns; at most maxObserveQueue
// wait.
type callQueue struct{ q wire.CallQueue }

// push queues call, or reports false if maxObserveQueue calls wait.
func (q *callQueue) push(d *Daemon, call func()) bool { return q.q.Push(&d.wg, call) }

// matching appends the hooks that match req to dst, in order, with the
// route parameters each one's route takes from the path.
func matching(dst []matched, hooks []*hookRef, req *wire.Request) []matched {
	for _, h := range hooks {
		if params, ok := h.matches(req.Method, req.Path); ok {
			dst = append(dst, matched{h, params})
		}
	}
	return dst
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
	where := func() string { return "on " + req.Method + " " + h.hook.Route }
	counts := h.unit.policy(h.hook.Name)
	if ok, why := h.breaker.Allow(time.Now()); !ok {
		counts.add(causeBreaker)
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, why+" "+where())
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
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, err.Error()+" "+where())
	}
	defer client.release()
	began := time.Now()
	a, herr := d.call(ctx, client, h, phase, req, params, resp)
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

func (d *Daemon) call(ctx context.Context, ref pluginRef, h *hookRef, phase schema.Phase, req *wire.Request, params []manifest.Param, resp *wire.Response) (wire.HookAnswer, *wire.HookError) {
	c := &wire.HookCall{Hook: h.hook.Name, Phase: phase, Timeout: h.hook.Deadline.Duration,
		Request: wire.HookRequest(req, h.hook.Route, params), Response: resp}
	if ref.lane != nil {
		return wire.CallHook(ctx, ref.lane, c, h.plugin)
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
		return wire.HookAnswer{}, hookErr(h, schema.HookErrorKind_unavailable, "stopped while handling the request "+c.Where())
	}
	if err != nil {
		return wire.HookAnswer{}, wire.CallError(ctx, cctx, start, c.Timeout, err, h.plugin, h.hook.Name, c.Where())
	}
	a, err := wire.ReadHookResult(phase, result)
	if err != nil {
		return wire.HookAnswer{}, wire.AnswerError(h.plugin, h.hook.Name, c.Where(), err)
	}
	return a, nil
}

func isDisconnected(err error) bool {
	return exc.IsType(err, exc.Disconnected)
}

// Observed is the host face's barrier for observers (host.capnp,
// observed): it returns once the observe calls queued for the plugin
// before it have been made, so that a host moving a plugin's observations
// to a direct lane keeps them in order.
func (h *hostSession) Observed(ctx context.Context, call schema.HostSession_observed) error {
	name, err := call.Args().Plugin()
	if err != nil {
		return errdefs.ToWire(errdefs.WithClass(fmt.Errorf("observed: %w", err), errdefs.ErrInvalid))
	}
	u, err := h.d.unit(name)
	if err != nil {
		return nil // nothing queued for a plugin that is not installed
	}
	reached := make(chan struct{})
	for !u.observeQ.push(h.d, func() { close(reached) }) {
		// The queue is full: it drains by its calls' deadlines.
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case <-reached:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
