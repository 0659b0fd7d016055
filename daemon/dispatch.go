package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/dimplugd/dimplugd/schema"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
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

// maxObservers bounds observe-phase calls in flight across the daemon.
// Observers are best effort: past the bound, copies are dropped and counted
// rather than queued without limit.
const maxObservers = 256

var observeSlots = make(chan struct{}, maxObservers)

// dispatch runs every hook of phase matching req, in order.
func (d *Daemon) dispatch(ctx context.Context, phase schema.Phase, req *wire.Request, resp *wire.Response) *outcome {
	out := &outcome{which: schema.DispatchResult_outcome_Which_continue}
	t := d.routes.cur.Load()
	if int(phase) >= len(t.phases) {
		return out
	}
	hooks := t.phases[phase]
	switch phase {
	case schema.Phase_request:
		var work *wire.Request
		for _, h := range hooks {
			params, ok := h.matches(req.Method, req.Path)
			if !ok {
				continue
			}
			if work == nil {
				work = req.Clone()
			}
			a, herr := d.callHook(ctx, h, phase, work, params, nil)
			if herr == nil {
				switch a.which {
				case schema.HookResult_Which_continue:
				case schema.HookResult_Which_mutateRequest:
					a.reqMut.Apply(work)
					out.applied = append(out.applied, h.plugin+"/"+h.hook.Name)
				case schema.HookResult_Which_respond:
					out.which, out.resp = schema.DispatchResult_outcome_Which_respond, a.resp
					out.applied = append(out.applied, h.plugin+"/"+h.hook.Name)
					return out
				default:
					herr = hookErr(h, schema.HookErrorKind_rejected, "answered a request hook with a response mutation")
				}
			}
			if herr != nil && out.failed(h, herr) {
				return out
			}
		}
		if work != nil {
			if m := wire.DiffRequest(req, work); !m.IsZero() {
				out.which, out.reqMut = schema.DispatchResult_outcome_Which_mutateRequest, m
			}
		}

	case schema.Phase_response:
		var work *wire.Response
		for _, h := range hooks {
			params, ok := h.matches(req.Method, req.Path)
			if !ok {
				continue
			}
			if work == nil {
				work = resp.Clone()
			}
			a, herr := d.callHook(ctx, h, phase, req, params, work)
			if herr == nil {
				switch a.which {
				case schema.HookResult_Which_continue:
				case schema.HookResult_Which_mutateResponse:
					a.respMut.Apply(work)
					out.applied = append(out.applied, h.plugin+"/"+h.hook.Name)
				default:
					herr = hookErr(h, schema.HookErrorKind_rejected, "answered a response hook with something other than a response mutation")
				}
			}
			if herr != nil && out.failed(h, herr) {
				return out
			}
		}
		if work != nil {
			if m := wire.DiffResponse(resp, work); !m.IsZero() {
				out.which, out.respMut = schema.DispatchResult_outcome_Which_mutateResponse, m
			}
		}

	case schema.Phase_route:
		for _, h := range hooks {
			params, ok := h.matches(req.Method, req.Path)
			if !ok {
				continue
			}
			a, herr := d.callHook(ctx, h, phase, req, params, nil)
			if herr == nil && a.which != schema.HookResult_Which_respond {
				herr = hookErr(h, schema.HookErrorKind_rejected, "owns the route but answered without a response")
			}
			if herr != nil {
				// The owner of a route is the only one who can answer it:
				// whatever its policy, a failure fails the request.
				out.which, out.fail = schema.DispatchResult_outcome_Which_failClosed, herr
				return out
			}
			out.which, out.resp = schema.DispatchResult_outcome_Which_respond, a.resp
			out.applied = append(out.applied, h.plugin+"/"+h.hook.Name)
			return out
		}

	case schema.Phase_observe:
		for _, h := range hooks {
			params, ok := h.matches(req.Method, req.Path)
			if !ok {
				continue
			}
			select {
			case observeSlots <- struct{}{}:
			default:
				out.skipped = append(out.skipped, *hookErr(h, schema.HookErrorKind_unavailable,
					fmt.Sprintf("observer dropped: %d observe calls already in flight", maxObservers)))
				continue
			}
			d.wg.Add(1)
			go func() { // owned by the daemon; ends at the hook's deadline at the latest
				defer d.wg.Done()
				defer func() { <-observeSlots }()
				if _, herr := d.callHook(d.ctx, h, phase, req, params, resp); herr != nil {
					h.unit.logf("observe hook %q failed: %s", h.hook.Name, herr.Message)
				}
			}()
		}
	}
	return out
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

func hookErr(h *hookRef, kind schema.HookErrorKind, msg string) *wire.HookError {
	return &wire.HookError{Plugin: h.plugin, Hook: h.hook.Name, Kind: kind, Message: msg}
}

// answer is a plugin's hook result, copied out of its message.
type answer struct {
	which   schema.HookResult_Which
	reqMut  wire.RequestMutation
	resp    *wire.Response
	respMut wire.ResponseMutation
}

func readAnswer(r schema.HookResult) (answer, error) {
	a := answer{which: r.Which()}
	var err error
	switch a.which {
	case schema.HookResult_Which_mutateRequest:
		var ms schema.RequestMutation
		if ms, err = r.MutateRequest(); err == nil {
			a.reqMut, err = wire.ReadRequestMutation(ms)
		}
	case schema.HookResult_Which_respond:
		var rs schema.HttpResponse
		if rs, err = r.Respond(); err == nil {
			a.resp, err = wire.ReadResponse(rs)
		}
	case schema.HookResult_Which_mutateResponse:
		var ms schema.ResponseMutation
		if ms, err = r.MutateResponse(); err == nil {
			a.respMut, err = wire.ReadResponseMutation(ms)
		}
	}
	return a, err
}

// callHook calls one plugin hook under its deadline.
func (d *Daemon) callHook(ctx context.Context, h *hookRef, phase schema.Phase, req *wire.Request, params []manifest.Param, resp *wire.Response) (answer, *wire.HookError) {
	where := fmt.Sprintf("on %s %s", req.Method, h.hook.Route)
	if ok, why := h.breaker.Allow(time.Now()); !ok {
		return answer{}, hookErr(h, schema.HookErrorKind_unavailable, why+" "+where)
	}
	client, err := h.unit.client()
	if err != nil {
		h.breaker.Release()
		return answer{}, hookErr(h, schema.HookErrorKind_unavailable, err.Error()+" "+where)
	}
	defer client.release()
	a, herr := d.call(ctx, client, h, phase, req, params, resp, where)
	// The host giving up and the plugin going away say nothing about the
	// hook's health.
	if herr != nil && herr.Kind == schema.HookErrorKind_unavailable {
		h.breaker.Release()
	} else {
		h.breaker.Record(herr == nil, time.Now())
	}
	return a, herr
}

func (d *Daemon) call(ctx context.Context, ref pluginRef, h *hookRef, phase schema.Phase, req *wire.Request, params []manifest.Param, resp *wire.Response, where string) (answer, *wire.HookError) {
	deadline := h.hook.Deadline.Duration
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	fill := func(hc schema.HookCall) error {
		if err := hc.SetHook(h.hook.Name); err != nil {
			return err
		}
		hc.SetPhase(phase)
		hc.SetTimeoutMicros(uint64(deadline / time.Microsecond))
		rq, err := hc.NewRequest()
		if err != nil {
			return err
		}
		r := *req
		r.Route = h.hook.Route
		r.Params = make([]wire.Param, len(params))
		for i, p := range params {
			r.Params[i] = wire.Param{Name: p.Name, Value: p.Value}
		}
		if err := wire.WriteRequest(rq, &r); err != nil {
			return err
		}
		if resp != nil {
			rs, err := hc.NewResponse()
			if err != nil {
				return err
			}
			return wire.WriteResponse(rs, resp)
		}
		return nil
	}

	var result schema.HookResult
	var err error
	if ref.lane != nil {
		var reply *capnp.Message
		var rf schema.LaneFrame
		reply, rf, err = ref.lane.Call(cctx, func(f schema.LaneFrame) error {
			hc, err := f.NewHook()
			if err != nil {
				return err
			}
			return fill(hc)
		})
		if err == nil {
			defer reply.Release()
			if rf.Which() != schema.LaneFrame_Which_hookResult {
				err = fmt.Errorf("unexpected %s reply on the hook lane", rf.Which())
			} else {
				result, err = rf.HookResult()
			}
		} else if errors.Is(err, wire.ErrLaneClosed) {
			return answer{}, hookErr(h, schema.HookErrorKind_unavailable, "stopped while handling the request "+where)
		}
	} else {
		fut, release := ref.plugin.Hook(cctx, func(p schema.Plugin_hook_Params) error {
			hc, err := p.NewCall()
			if err != nil {
				return err
			}
			return fill(hc)
		})
		defer release()
		var res schema.Plugin_hook_Results
		if res, err = fut.Struct(); err == nil {
			result, err = res.Result()
		} else if isDisconnected(err) && !errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return answer{}, hookErr(h, schema.HookErrorKind_unavailable, "stopped while handling the request "+where)
		}
	}
	if err != nil {
		// The plugin enforces the same deadline and may answer with its own
		// "context deadline exceeded" a moment before ours fires.
		timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded) || time.Since(start) >= deadline ||
			strings.HasSuffix(err.Error(), context.DeadlineExceeded.Error())
		switch {
		case timedOut && ctx.Err() == nil:
			return answer{}, hookErr(h, schema.HookErrorKind_timeout, fmt.Sprintf("exceeded its %s deadline %s", deadline, where))
		case ctx.Err() != nil:
			return answer{}, hookErr(h, schema.HookErrorKind_unavailable, "the host cancelled the request "+where)
		}
		return answer{}, hookErr(h, schema.HookErrorKind_failed, "failed "+where+": "+wire.RemoteMessage(err))
	}
	a, err := readAnswer(result)
	if err != nil {
		return answer{}, hookErr(h, schema.HookErrorKind_failed, "sent an unreadable result "+where+": "+err.Error())
	}
	return a, nil
}

func isDisconnected(err error) bool {
	return exc.IsType(err, exc.Disconnected)
}
